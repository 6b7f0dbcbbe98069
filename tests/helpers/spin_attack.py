"""Another local user against the machine-wide spinner counts.

``in_namespace()`` runs a program in new mount and IPC namespaces, with
private tmpfs on /dev/shm and /tmp: nothing it does touches the machine's
files or System V shared memory.  There, ``python -m helpers.spin_attack
SCENARIO`` (as root) sets a scene as ``nobody``, runs a victim program as
root, and prints one JSON line of what happened.  This module imports
nothing of fastmgr: importing the wire makes the importing user's segment,
and the scene must be set before any of the victim's processes runs.
"""
import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import time

#: the tests directory (the programs run there)
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def child_env(**extra):
    """The environment of a child Python: it imports fastmgr from where we
    would (found without importing it)."""
    root = os.path.dirname(os.path.dirname(importlib.util.find_spec("fastmgr").origin))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def in_namespace(argv, timeout=60, env=None):
    """Run argv in new mount and IPC namespaces, with private tmpfs on
    /dev/shm and /tmp, from the tests directory; returns the
    CompletedProcess.  Root only.  Nothing it does touches the machine's
    /dev/shm, /tmp or System V shared memory."""
    script = ("mount -t tmpfs -o mode=1777 none /dev/shm && "
              "mount -t tmpfs -o mode=1777 none /tmp && exec \"$@\"")
    return subprocess.run(["unshare", "--mount", "--ipc", "--propagation", "private",
                           "sh", "-c", script, "sh"] + list(argv), cwd=TESTS,
                          env=child_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def as_user(uid, fn):
    """Call fn() in a forked child running as uid; returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


OLD_SPIN_FILE = "/dev/shm/fastmgr-spin-%d"      # where the spinner counts used to live
OLD_SPIN_FILE_BYTES = 64 * 8 + 64 * 64

VICTIM = r"""
import json, logging, sys, time
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("fastmgr").addHandler(Keep())
import fastmgr._wire as wire
from fastmgr import SyncManager
calls = 0
with SyncManager() as m:          # a server process and calls to it, spinning
    d = m.dict()
    stop = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < stop:
        d[calls % 100] = calls
        calls += 1
# (read with getattr: the same program runs against versions without them)
print(json.dumps({"sharing": getattr(wire, "spin_sharing", lambda: None)(),
                  "warnings": warnings, "calls": calls,
                  "probe": getattr(wire, "_spin_slot_probe", lambda: None)()}))
"""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    return libc


def _attach(key, size, flags):
    """(shmid, address) of the segment under key, made with flags if new."""
    libc = _libc()
    shmid = libc.shmget(key, size, flags)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    address = libc.shmat(shmid, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "shmat")
    return shmid, address


def _fill_with_future(address, size):
    """Every slot's start time far in the future (the magic word kept)."""
    words = (ctypes.c_int64 * (size // 8)).from_address(address)
    for i in range(8, 8 + 64):
        words[i] = (1 << 62)


def spin_segment(uid):
    """(key, size) of uid's segment, as the wire computes it (importing the
    wire here would make this process's own segment; a test checks that
    the two agree)."""
    key = (0x2F4D5332 ^ (uid * 2654435761)) & 0x7FFFFFFF
    return key or 1, 64 + 64 * 8 + 64 * 64


def _victim(seconds=1.0):
    out = subprocess.run([sys.executable, "-c", VICTIM, str(seconds)], capture_output=True,
                         text=True, env=child_env(), timeout=60)
    result = {"returncode": out.returncode, "stderr": out.stderr[-2000:]}
    if out.returncode == 0:
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


def spin_attack(scenario):
    """Set the scene as another user (nobody), run a victim (this user),
    and report what the victim saw and what became of the scene."""
    me = os.geteuid()
    report = {}
    if scenario == "squat":
        # nobody makes the victim's segment first, open to all, of the right
        # size and magic, every slot "busy" until far in the future
        key, size = spin_segment(me)

        def squat():
            _, address = _attach(key, size, 0o1000 | 0o2000 | 0o666)  # IPC_CREAT | IPC_EXCL
            ctypes.c_uint64.from_address(address).value = 0x314e495053474d46
            _fill_with_future(address, size)
        report["attacker"] = as_user(NOBODY, squat)
    elif scenario == "symlink":
        # the old file's path, a symlink to a file the victim owns
        with open("/tmp/victim-file", "wb"):
            pass
        report["attacker"] = as_user(
            NOBODY, lambda: os.symlink("/tmp/victim-file", OLD_SPIN_FILE % me))
    elif scenario == "truncate":
        # the old file's path, nobody's own and writable by all, truncated
        # again and again while the victim runs
        def plant():
            fd = os.open(OLD_SPIN_FILE % me, os.O_RDWR | os.O_CREAT, 0o666)
            os.fchmod(fd, 0o666)
            os.ftruncate(fd, OLD_SPIN_FILE_BYTES)
            os.close(fd)
        report["attacker"] = as_user(NOBODY, plant)
        truncator = os.fork()
        if truncator == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            stop = time.monotonic() + 4
            while time.monotonic() < stop:
                try:
                    os.truncate(OLD_SPIN_FILE % me, 0)
                    os.truncate(OLD_SPIN_FILE % me, OLD_SPIN_FILE_BYTES)
                except OSError:
                    pass
            os._exit(0)
    elif scenario == "future":
        # this user's own segment, every slot's time set in the future by
        # one of this user's processes: stale, not busy
        subprocess.run([sys.executable, "-c", "import fastmgr._wire"], env=child_env(),
                       check=True)
        key, size = spin_segment(me)
        _, address = _attach(key, 0, 0)
        _fill_with_future(address, size)
    report["victim"] = _victim(2.0 if scenario == "truncate" else 0.5)
    if scenario == "truncate":
        os.waitpid(truncator, 0)
    if scenario == "symlink":
        report["victim_file_bytes"] = os.stat("/tmp/victim-file").st_size
    report["files"] = sorted(os.listdir("/dev/shm"))
    print(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m helpers.spin_attack SCENARIO")
    spin_attack(sys.argv[1])
