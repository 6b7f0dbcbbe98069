"""Module-level helpers for tests/test_remote.py.

What a server or a child process needs lives here: the manager class that
``fastmgr serve helpers.remote:RemoteManager`` serves, and small programs
run as ``python -m helpers.remote MODE ...`` (the tests directory and the
directory fastmgr is imported from are on their ``PYTHONPATH``):

``orphan HOST``
    start a manager with ``start()``, print its pid and address as one JSON
    line, then sleep until killed;
``client HOST PORT``
    connect to a manager, then run the JSON commands read from stdin one a
    line and print one JSON answer a line (used across network namespaces).
"""
import json
import os
import sys
import time

from fastmgr import BaseManager

AUTHKEY = b"remote-tests-key"


def _remote_failure_site(value):
    """A function whose name must show in the caller's __cause__."""
    raise ValueError("remote failure", value)


class Service:
    """The shared object the tests call."""

    def __init__(self, label="service"):
        self.label = label

    def add(self, x, y):
        return x + y

    def echo(self, value):
        return value

    def slow(self, seconds, value):
        time.sleep(seconds)
        return value

    def fail(self, value):
        _remote_failure_site(value)

    def fail_key(self, key):
        raise KeyError(key)

    def make_set(self):
        return {1, 2, 3}

    def pid(self):
        return os.getpid()


class RemoteManager(BaseManager):
    pass


RemoteManager.register("Service", Service)


# ---------------------------------------------------------------------------
# programs

def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def orphan(host):
    """Start a manager, report its pid, wait to be killed (by SIGKILL)."""
    manager = RemoteManager(address=(host, 0), authkey=AUTHKEY)
    manager.start()
    _emit({"manager_pid": manager._process.pid, "address": list(manager.address)})
    while True:
        time.sleep(60)


def client(host, port):
    """Run calls asked for on stdin; answer each with one JSON line."""
    manager = None
    proxy = None
    for line in sys.stdin:
        cmd = json.loads(line)
        started = time.monotonic()
        try:
            if cmd["op"] == "connect":
                manager = RemoteManager(address=(host, int(port)), authkey=AUTHKEY,
                                        timeout=cmd.get("timeout"),
                                        connect_timeout=cmd.get("connect_timeout"))
                manager.connect()
                proxy = manager.Service()
                value = proxy.pid()
            elif cmd["op"] == "call":
                value = getattr(proxy, cmd["method"])(*cmd.get("args", ()))
            elif cmd["op"] == "exit":
                _emit({"ok": None})
                return
            else:
                raise ValueError("unknown op %r" % cmd["op"])
        except BaseException as exc:  # reported, not raised: the test judges
            _emit({"exc": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                   "text": str(exc), "elapsed": time.monotonic() - started})
            if isinstance(exc, KeyboardInterrupt):
                raise
        else:
            _emit({"ok": value, "elapsed": time.monotonic() - started})


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "orphan":
        orphan(sys.argv[2])
    elif mode == "client":
        client(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode %r" % mode)
