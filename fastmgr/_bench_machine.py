"""The machine under ``python -m fastmgr bench``: pinning a row's threads
to one CPU, the bare-socket floor that large rows are read against, and the
machine's description in ``--json`` and in the ``--plot`` figure.
"""
import contextlib
import multiprocessing
import os
import platform
import socket
import struct

import fastmgr


# -- pinning to one CPU

def _threads(pid):
    try:
        return [int(tid) for tid in os.listdir("/proc/%d/task" % pid)]
    except OSError:
        return [pid]


@contextlib.contextmanager
def pinned_to_one_cpu(pids):
    """Pin every thread of this process and of `pids` to one CPU (threads
    they start meanwhile inherit it); restore the old masks afterwards."""
    cpu = min(os.sched_getaffinity(0))
    saved = {}
    try:
        for pid in [os.getpid(), *pids]:
            for tid in _threads(pid):
                try:
                    mask = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {cpu})
                except ProcessLookupError:  # listed, then gone before we got to it
                    continue
                saved[tid] = mask
        yield cpu
    finally:
        for tid, mask in saved.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:  # the thread has gone
                pass


# -- the socket floor: two processes, one socketpair, no manager

FLOOR_SIZE = 1 << 20


def _recv_exactly_into(sock, view):
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            return False
        got += n
    return True


def _floor_server(sock, other_end, size, both_ways):
    other_end.close()  # inherited through fork: EOF must reach us
    buf = bytearray(size + 4)
    view = memoryview(buf)
    while True:
        if not _recv_exactly_into(sock, view[:4]):
            return
        length = struct.unpack("!I", view[:4])[0]
        _recv_exactly_into(sock, view[:length])
        if both_ways:
            sock.sendall(view[:length])
        else:
            sock.sendall(b"\x01")


class SocketFloor:
    """A ping-pong over a bare socketpair; call() is one round trip: size
    bytes there, and back if both_ways (else a 1-byte reply)."""

    def __init__(self, size=FLOOR_SIZE, both_ways=False):
        self._sock, theirs = socket.socketpair()
        self._process = multiprocessing.get_context("fork").Process(
            target=_floor_server, args=(theirs, self._sock, size, both_ways), daemon=True)
        self._process.start()
        theirs.close()
        self._message = struct.pack("!I", size) + bytes(size)
        self._back = memoryview(bytearray(size if both_ways else 1))

    def call(self):
        self._sock.sendall(self._message)
        if not _recv_exactly_into(self._sock, self._back):
            raise RuntimeError("socket floor server died")

    def close(self):
        self._sock.close()
        self._process.join(5)


# -- the machine, and the figure that names it

def _cpu_model():
    """The CPU's model name from /proc/cpuinfo, or the machine type."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.machine()


def machine():
    """What the figures were measured on: the CPUs (usable by this process,
    and on the machine), the Python, the kernel, the start method."""
    return {
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpus_online": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "kernel": "%s %s %s" % (platform.system(), platform.release(), platform.machine()),
        "start_method": multiprocessing.get_start_method(),
        "fastmgr": fastmgr.__version__,
    }


def describe_machine(m):
    """machine() as two lines for a figure."""
    return ("%d of %d CPUs usable (%s); %s; %s\nfastmgr %s, start method %s"
            % (m["cpus_usable"], m["cpus_online"], m["cpu_model"], m["python"], m["kernel"],
               m["fastmgr"], m["start_method"]))


def figure(rows, machine_info):
    """The bar chart of speedups, with the machine it was measured on."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastmgr[plot]'")
    rows = [r for r in rows if "speedup" in r]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 2.2))
    names = [r["op"] for r in rows]
    ax.barh(names, [r["speedup"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("speedup over multiprocessing.managers (x, log scale)")
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        ax.text(r["speedup"], i, " %.1fx" % r["speedup"], va="center", fontsize=8)
    ax.set_title("fastmgr against multiprocessing.managers", fontsize=11)
    fig.text(0.01, 0.01, describe_machine(machine_info), fontsize=7.5, color="dimgrey",
             va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot(rows, path, machine_info=None):
    fig = figure(rows, machine_info or machine())
    fig.savefig(path)
