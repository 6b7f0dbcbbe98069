"""Every exception that fastmgr raises of its own.

Where the stdlib has a type for a failure, fastmgr raises that type or a
subclass of it, so existing ``except`` clauses keep working.
"""
from multiprocessing import AuthenticationError, ProcessError

__all__ = [
    "AuthenticationError",
    "ProcessError",
    "ProtocolError",
    "MessageTooLarge",
    "UnsafeValueError",
    "RemoteError",
    "RemoteTraceback",
    "ManagerGone",
]


class ProtocolError(OSError):
    """A peer sent bytes that are not a valid fastmgr frame or message.

    The stdlib raises ``OSError`` for a bad message length; this is one.
    """


class MessageTooLarge(ProtocolError):
    """A frame announced a body larger than the receiving side accepts."""


class UnsafeValueError(TypeError):
    """The ``safe`` serializer was asked to send a value that needs pickle."""


class RemoteError(Exception):
    """The server failed in a way that has no exception object to re-raise.

    ``args[0]`` is the server-side traceback text, shown by ``str()`` under a
    banner, as the stdlib does.
    """

    def __str__(self):
        banner = "-" * 75
        return "\n%s\n%s%s" % (banner, self.args[0] if self.args else "", banner)


class RemoteTraceback(Exception):
    """Carries the server-side traceback as the ``__cause__`` of a re-raised
    exception, so it shows in the caller's traceback."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return "\n\nServer-side traceback:\n" + self.tb


class ManagerGone(ConnectionError, EOFError):
    """The manager cannot be reached: it exited, was killed, or the link broke.

    A ``ConnectionError`` and also an ``EOFError``, which is what the stdlib
    raises when its manager disappears.
    """
