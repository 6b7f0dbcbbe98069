"""What many test modules use: which wire runs, the managers module of an
implementation's name, a thread that keeps its outcome, and a child
process's environment, messages and exit."""
import os
import socket
import threading

import pytest

from fastmgr import _settings

#: whether FASTMGR_PUREPYTHON chose the pure-Python wire (read as fastmgr reads it)
PUREPYTHON = _settings.PUREPYTHON


def managers_module(name):
    """multiprocessing.managers for "stdlib", fastmgr for "fastmgr"."""
    if name == "stdlib":
        import multiprocessing.managers as module
    else:
        import fastmgr as module
    return module


def child_env(**extra):
    """The environment for a child Python that must import the fastmgr under
    test (installed, or this checkout when run from it)."""
    import fastmgr

    root = os.path.dirname(os.path.dirname(fastmgr.__file__))
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class Worker(threading.Thread):
    """Runs fn(*args) in a thread and keeps the result or the exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def outcome(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def receive(conn, proc, timeout=30):
    """The next message from a child process; a child's ("error",
    traceback) fails the test."""
    if not conn.poll(timeout):
        pytest.fail("no message from %r within %ss" % (proc, timeout))
    try:
        message = conn.recv()
    except EOFError:
        proc.join(5)
        pytest.fail("%r closed its pipe without a message (exitcode %r)" % (proc, proc.exitcode))
    if isinstance(message, tuple) and message[0] == "error":
        pytest.fail("%r failed:\n%s" % (proc, message[1]))
    return message


def child_result(conn, proc, timeout=30):
    """The value of a child's ("ok", value) message."""
    tag, value = receive(conn, proc, timeout)
    assert tag == "ok"
    return value


def finish(proc, timeout=10):
    """The child exits, with 0, within the bound."""
    proc.join(timeout)
    assert not proc.is_alive(), "%r did not exit within %ss" % (proc, timeout)
    assert proc.exitcode == 0, "%r exited with %r" % (proc, proc.exitcode)


def raw_pair(transport):
    """Two connected sockets: a socketpair ("unix") or over loopback ("tcp")."""
    if transport == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return accepted, client
