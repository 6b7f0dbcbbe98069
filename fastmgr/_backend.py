"""Chooses the wire implementation, once, at import.

``FASTMGR_PUREPYTHON=1`` (see ``_settings``) forces the pure-Python twin ``_wire_py``.  Without
it the compiled ``_wire`` is required: a missing extension is an error, not
a silent slowdown.  ``describe()`` says which one is in use and from where.
"""
from ._protocol import WIRE_API
from ._settings import PUREPYTHON

if PUREPYTHON:
    from . import _wire_py as wire
else:
    try:
        from . import _wire as wire
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "fastmgr's compiled extension fastmgr._wire is not importable (%s). "
            "Install fastmgr with pip (it builds the extension), or set "
            "FASTMGR_PUREPYTHON=1 to run on the slow pure-Python wire." % exc
        ) from exc

missing = [name for name in WIRE_API if not hasattr(wire, name)]
if missing:  # pragma: no cover - a broken build
    raise ImportError("fastmgr wire %r lacks %s" % (wire.__name__, ", ".join(missing)))
del missing


def describe():
    """One line naming the wire in use and the file it was loaded from."""
    return "fastmgr wire: %s (%s)" % (wire.IMPLEMENTATION, wire.__file__)
