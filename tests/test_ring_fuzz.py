"""The shared-memory rings against a hostile peer, at random.

A peer that shares the ring file can write anything into it: impossible
positions, detours announced wrongly or never taken, garbage where frames
belong, and bytes on the socket beside the rings that no detour announced.
Whatever it does, the side reading it must only ever end that connection
with an OSError (ProtocolError, TimeoutError, ...) or an EOFError, or go on
serving it: never crash, never hang, and never let it starve anyone else.

Two tests, seeded (FASTMGR_FUZZ_SEED, default fixed; FASTMGR_FUZZ_ROUNDS
scales the number of rounds), each round deterministic for its seed:

* through the hub: a hostile ring client and a good one per round; the
  hostile one makes a valid call, then a few random hostile moves; the
  good one's calls (small and 1 MiB) must still come back right and in
  time, no hub thread may fail, and once the hostile client is gone the
  hub must end its connection with an allowed exception (or None);
* a plain ring pair: the server Connection's poll(), recv() and sends
  (short timeout) must return, or raise an allowed exception, in time.

The rounds run in a child process that prints each round's moves as it
makes them: a loop that never lets the GIL go would freeze pytest's own
timeout along with everything else, so the parent bounds the child's time
(then has it dump its threads' stacks) and reports the round it was in.
"""
import collections
import mmap
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from helpers.common import Worker, child_env
from fastmgr import _protocol as P

from helpers.hub_rig import BOX, Rig
from helpers.ring import DETOUR_AT, DETOUR_MARK, DETOUR_MIN, TAIL, WRITER_CPU, new_memfd

pytestmark = pytest.mark.timeout(60)

SEED = int(os.environ.get("FASTMGR_FUZZ_SEED", "20240611"))
SCALE = float(os.environ.get("FASTMGR_FUZZ_ROUNDS", "1"))

# the layout of one ring (fastmgr/_wirelib/fm_ring.h): offset, format
FIELDS = {
    "head": (0, "<Q"),
    "tail": (TAIL, "<Q"),
    "detour_at": (DETOUR_AT, "<Q"),
    "detour_len": (DETOUR_AT + 8, "<Q"),
    "detour_pending": (DETOUR_AT + 16, "<I"),
    "writer_cpu": (WRITER_CPU, "<I"),  # a hint only: any value is harmless
    "reader_waiting": (128, "<I"),
    "writer_waiting": (192, "<I"),
}
DATA = 256
CAP = 262144            # FM_RING_CAP
U64 = (1 << 64) - 1

ALLOWED = (OSError, EOFError)  # ProtocolError and TimeoutError are OSErrors
GOOD_WAIT = 5.0   # seconds a good client's call may take, however hostile the other
END_WAIT = 5.0    # seconds for the hub to end a connection whose client is gone
SILENT = 0.15     # the plain pair's server timeout: a silent peer is a TimeoutError
CHILD_LIMIT = 40 * max(1.0, SCALE)  # seconds a child may take for all its rounds,
STALL = 15                          # and without a line of output (> two bounded waits)
BIG = os.urandom(1 << 20)


def say(text):
    sys.stdout.write(text + "\n")  # one write: the line is whole even if we freeze next
    sys.stdout.flush()


def allowed(exc):
    return exc is None or isinstance(exc, ALLOWED)


# ---------------------------------------------------------------------------
# what a hostile peer writes

def u64_value(rng, tail, head):
    """A boundary value for a position or a length, or a random one."""
    return rng.choice([
        0, 1, tail, tail - 1, tail + 1, tail + 2, head, head + CAP, head + CAP + 1,
        tail + CAP, tail - CAP, tail - CAP + 1, CAP, CAP - 1, CAP + 1, DETOUR_MIN, 4, 5,
        1 << 63, (1 << 63) - 1, U64, rng.getrandbits(64), tail + rng.randrange(1, 4096),
    ]) & U64


def u32_value(rng):
    return rng.choice([0, 1, 2, 0x5A, 1 << 31, (1 << 32) - 1, rng.getrandbits(32)])


def frame_header(rng):
    """A frame header with a length that is huge, negative or at the limit."""
    n = rng.choice([0x7FFFFFFF, -1, -2, -(1 << 31), P.DEFAULT_MAX_MESSAGE,
                    P.DEFAULT_MAX_MESSAGE + 1, 1 << 24, 0, 9])
    head = struct.pack("!i", n)
    if n == -1:
        head += struct.pack("!Q", rng.choice([0, 5, 1 << 31, 1 << 63, U64]))
    return head


def payload(rng, codec, requests):
    """Bytes for the ring's data area or the socket: garbage, zeros,
    markers with partial frames, bad headers, (broken) valid frames of
    requests, or of plain values."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.choice([1, 3, 4, 5, 12, 13, 100, 1000, 70000]))
    if kind == 1:
        return bytes(rng.choice([1, 2, 64, 5000]))
    if kind == 2:
        return DETOUR_MARK + frame_header(rng)[:rng.randrange(5)]
    if kind == 3:
        return frame_header(rng) + rng.randbytes(rng.randrange(32))
    value = rng.randbytes(rng.randrange(64))
    body = (codec.encode_request(P.REQ_CALL, BOX, "echo", (value,), None) if requests
            else codec.dumps(value))
    data = bytearray(struct.pack("!i", len(body)) + body)
    if kind == 4:
        return bytes(data[:rng.randrange(1, len(data))])  # cut short
    if kind == 5:
        data[rng.randrange(len(data))] = rng.randrange(256)  # one byte flipped
    return bytes(data)


class Hostile:
    """One side of a ring connection, written over by hand: the memfd's
    header fields and data, and raw bytes on its socket.  Every move is
    printed before it is made, for the report of a failure.  Its valid
    messages are requests (to a hub), or else plain values."""

    def __init__(self, rng, wire, conn, fd, requests=True):
        self.rng, self.conn, self.requests = rng, conn, requests
        self.codec = wire.Codec()
        self.shared = mmap.mmap(fd, wire.Connection.ring_size())
        self.ring = wire.Connection.ring_size() // 2  # where server-to-client starts
        self.raw = socket.socket(fileno=os.dup(conn.fileno()))

    def note(self, text):
        say("  " + text)

    def close(self):
        self.shared.close()
        self.raw.close()
        self.conn.close()

    def get(self, name, ring=0):
        offset, fmt = FIELDS[name]
        return struct.unpack_from(fmt, self.shared, ring + offset)[0]

    def put(self, name, value, ring=0):
        offset, fmt = FIELDS[name]
        struct.pack_into(fmt, self.shared, ring + offset, value)

    def send(self, data):
        try:
            self.raw.send(data, socket.MSG_DONTWAIT)
        except OSError:
            pass  # full, or closed by a move before: either is fine

    def move(self):
        """One random hostile move."""
        rng = self.rng
        moves = [self.scribble, self.scribble, self.scribble, self.scribble_data,
                 self.write_frames, self.write_frames, self.socket_bytes, self.detour,
                 self.detour, self.valid_message, self.close_socket]
        rng.choice(moves)()

    def scribble(self):
        """A boundary or random value in a header field: of the ring this
        side writes, or one that it owns in the other."""
        rng = self.rng
        if rng.random() < 0.75:
            ring, name = 0, rng.choice(list(FIELDS))
        else:
            ring, name = self.ring, rng.choice(["head", "reader_waiting", "writer_waiting"])
        if FIELDS[name][1] == "<Q":
            value = u64_value(rng, self.get("tail", ring), self.get("head", ring))
        else:
            value = u32_value(rng)
        self.note("%s.%s=%#x" % ("s2c" if ring else "c2s", name, value))
        self.put(name, value, ring)

    def _put_data(self, at, data):
        at %= CAP
        first = min(len(data), CAP - at)
        self.shared[DATA + at:DATA + at + first] = data[:first]
        self.shared[DATA:DATA + len(data) - first] = data[first:]

    def scribble_data(self):
        data = payload(self.rng, self.codec, self.requests)[:CAP]
        at = self.rng.randrange(CAP)
        self.note("data[%d:+%d]=%r" % (at, len(data), data[:16]))
        self._put_data(at, data)

    def write_frames(self):
        """Bytes written where the stream goes on and published: the
        reader takes them as the next frames."""
        data = payload(self.rng, self.codec, self.requests)[:CAP]
        tail, wake = self.get("tail"), self.rng.random() < 0.5
        self.note("ring+%d:%r%s" % (len(data), data[:16], " and a wake-up" if wake else ""))
        self._put_data(tail, data)
        self.put("tail", (tail + len(data)) & U64)
        if wake:
            self.send(b"\0")

    def socket_bytes(self):
        data = payload(self.rng, self.codec, self.requests)
        if self.rng.random() < 0.3:
            data = bytes(self.rng.randrange(1, 8)) + data
        self.note("socket:%r" % data[:16])
        self.send(data)

    def detour(self):
        """A detour announced (near) where the stream is, or not, with a
        length true or not, then its marker and some bytes on the socket."""
        rng = self.rng
        tail = self.get("tail")
        body = payload(rng, self.codec, self.requests)
        at = (tail + rng.choice([0, 0, 0, -1, 1, 100, CAP])) & U64
        length = rng.choice([len(body), len(body), 0, 1, len(body) + 1, DETOUR_MIN, U64])
        pending = rng.choice([1, 1, 1, 0, 2])
        mark = rng.choice([DETOUR_MARK, DETOUR_MARK, DETOUR_MARK, b"\x01", b""])
        data = bytes(rng.choice([0, 0, 1, 3])) + mark + body[:rng.choice([len(body), 3, 0])]
        self.note("detour at=tail%+d len=%d pending=%d socket:%r"
                  % (at - tail, length, pending, data[:16]))
        self.put("detour_at", at)
        self.put("detour_len", length)
        self.put("detour_pending", pending)
        self.send(data)

    def valid_message(self):
        """A message sent the proper way, among the garbage (replies unread)."""
        value = self.rng.choice([1, b"x" * 1000, BIG[:DETOUR_MIN]])
        self.note("valid message (%s)" % (len(value) if isinstance(value, bytes) else value))
        try:
            if self.requests:
                self.conn.send_request(P.REQ_CALL, BOX, "echo", (value,))
            else:
                self.conn.send(value)
        except ALLOWED:
            pass
        # anything else fails the test: our own side must cope as well

    def close_socket(self):
        how = self.rng.choice(["close", "shutdown"])
        self.note(how)
        if how == "close":
            self.raw.close()
            self.conn.close()
        else:
            try:
                self.raw.shutdown(socket.SHUT_WR)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# the parent: runs a child's rounds, bounded in time

HERE = os.path.dirname(os.path.abspath(__file__))


def last_round(output):
    """The child's output from the start of its last round on."""
    at = output.rfind("\nround ")
    return output[at + 1:] if at >= 0 else output


def run_rounds(name, rounds):
    """Run name(SEED, rounds) of this module in a child; fail with the
    round it failed in, or stalled in (no output for STALL seconds)."""
    code = "import test_ring_fuzz as F; F.%s(%d, %d)" % (name, SEED, rounds)
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", code], cwd=HERE,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, stalled = b"", False
    try:
        deadline = time.monotonic() + CHILD_LIMIT
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], STALL)
            if not ready or time.monotonic() > deadline:
                stalled = True
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
                output += proc.communicate(timeout=10)[0]
                break
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            output += chunk
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    text = output.decode(errors="replace")
    if stalled:
        pytest.fail("seed %d: stuck (no output for %ss, or over %ss in all) in\n%s"
                    % (SEED, STALL, CHILD_LIMIT, last_round(text)), pytrace=False)
    if proc.returncode != 0:
        pytest.fail("seed %d: failed (exit %d) in\n%s"
                    % (SEED, proc.returncode, last_round(text)), pytrace=False)
    print(text.rstrip().rpartition("\n")[2])  # the summary


@pytest.mark.timeout(CHILD_LIMIT + 20)
def test_hub_survives_hostile_ring_clients(compiled_wire):
    run_rounds("hub_rounds", max(1, int(100 * SCALE)))


@pytest.mark.timeout(CHILD_LIMIT + 20)
def test_ring_pair_survives_a_hostile_client(compiled_wire):
    run_rounds("pair_rounds", max(1, int(60 * SCALE)))


# ---------------------------------------------------------------------------
# the child: the rounds

def thread_failures():
    """Exceptions that escape a thread, or are reported as unraisable (one
    raised in a noexcept function of the wire lands there), from now on."""
    seen = []
    threading.excepthook = lambda args: seen.append(args.exc_value)
    sys.unraisablehook = lambda args: seen.append(args.exc_value)
    return seen


def good_calls_work(good, rng):
    start = time.monotonic()
    value = rng.randrange(1 << 40)
    assert good.call(BOX, "echo", (value,)) == (P.RESP_RETURN, value)
    assert good.call(BOX, "echo", (BIG,)) == (P.RESP_RETURN, BIG)
    took = time.monotonic() - start
    assert took < GOOD_WAIT, "the good client's calls took %.2fs" % took


def hub_round(rig, wire, rng, failures, outcomes):
    """A hostile and a good ring client of the hub, for one round."""
    fds = [new_memfd(wire), new_memfd(wire)]
    hostile_conn, good = rig.connect(ring=fds[0]), rig.connect(ring=fds[1])
    good.timeout = GOOD_WAIT
    number = rig.number(hostile_conn)
    hostile = Hostile(rng, wire, hostile_conn, fds[0])
    try:
        assert hostile_conn.call(BOX, "echo", ("hi",)) == (P.RESP_RETURN, "hi")
        hostile_conn.timeout = SILENT  # for its own sends among the moves
        for _ in range(rng.randrange(1, 7)):
            hostile.move()
            time.sleep(rng.choice([0, 0, 0.001, 0.005]))
        hostile.send(b"\0")  # a wake-up, in case the loop sleeps
        time.sleep(0.005)
        say("  the good client calls")
        good_calls_work(good, rng)
        assert not failures, "a hub thread failed: %r" % failures
        say("  the hostile client goes")
        hostile.close()
        end, = rig.wait_ended([number], END_WAIT)  # or fails: the hub kept it
        assert allowed(end[0]), "the hub ended the connection with %r" % (end[0],)
        outcomes[type(end[0]).__name__ if end[0] else "None"] += 1
        good.close()
        assert rig.wait_ended([rig.number(good)], END_WAIT) == [(None, True)]
    finally:
        hostile.close()
        good.close()
        for fd in fds:
            os.close(fd)


def hub_rounds(seed, rounds):
    from fastmgr import _wire as wire
    failures = thread_failures()
    outcomes = collections.Counter()
    rig = Rig(wire)
    try:
        for round_ in range(rounds):
            say("round %d (seed %d)" % (round_, seed))
            rng = random.Random("%d/hub/%d" % (seed, round_))
            hub_round(rig, wire, rng, failures, outcomes)
    finally:
        say("closing the hub")
        rig.close()
    assert not failures, failures
    say("%d rounds; the hostile connections ended with: %s" % (rounds, dict(outcomes)))


def serve_a_little(server):
    """What the server side of a pair comes to: a poll, a small message
    sent, one received and up to two more if they are there, then a large
    one sent; stops at the first (allowed) exception."""
    outcome = []
    try:
        outcome.append(("polled", server.poll(SILENT)))
        server.send_bytes(b"small")
        outcome.append(("value", server.recv()))
        while len(outcome) < 4 and server.poll(0):
            outcome.append(("value", server.recv()))
        server.send_bytes(BIG)
        outcome.append(("sent",))
    except ALLOWED as exc:
        outcome.append(("raised", exc))
    return outcome


def pair_round(wire, rng, outcomes):
    """A ring pair whose client is hostile, for one round."""
    fd = new_memfd(wire)
    a, b = socket.socketpair()
    client = wire.Connection(a, timeout=SILENT)
    # "safe": garbage that reads as a pickle is a ProtocolError, never unpickled
    server = wire.Connection(b, codec=wire.Codec("safe"), timeout=SILENT)
    client.attach_ring(fd, False)
    server.attach_ring(fd, True)
    hostile = Hostile(rng, wire, client, fd, requests=False)
    try:
        client.send("hi")
        assert server.recv() == "hi"
        for _ in range(rng.randrange(1, 7)):
            hostile.move()
        say("  the server side reads")
        start = time.monotonic()
        worker = Worker(serve_a_little, server)
        worker.join(7 * SILENT + 2.0)  # at most six steps, each bounded by SILENT
        assert not worker.is_alive(), "the server side hangs"
        got = worker.outcome(0)  # raises what was not allowed
        say("  -> %r in %.2fs" % ([o[:1] + tuple(type(x).__name__ for x in o[1:])
                                   for o in got], time.monotonic() - start))
        outcomes[type(got[-1][1]).__name__ if got[-1][0] == "raised" else got[-1][0]] += 1
    finally:
        hostile.close()
        server.close()
        os.close(fd)


def pair_rounds(seed, rounds):
    from fastmgr import _wire as wire
    failures = thread_failures()
    outcomes = collections.Counter()
    for round_ in range(rounds):
        say("round %d (seed %d)" % (round_, seed))
        pair_round(wire, random.Random("%d/pair/%d" % (seed, round_)), outcomes)
    assert not failures, failures
    say("%d rounds; the server sides came to: %s" % (rounds, dict(outcomes)))
