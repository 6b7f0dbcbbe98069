"""Every ``FASTMGR_*`` environment variable fastmgr reads, read here once,
at import.

One rule per kind of value, and a ``ValueError`` naming the variable when a
value breaks it (an empty value counts as unset):

- a *switch* is ``1``, ``true``, ``yes`` or ``on`` for on, and ``0``,
  ``false``, ``no`` or ``off`` for off (any case);
- a *count* is a whole number within the range given below;
- a *duration* is a number of seconds within the range given below;
- a *choice* is one of the words given below (any case).

=========================  ========  =======  ================================
variable                   kind      default  meaning
=========================  ========  =======  ================================
FASTMGR_PUREPYTHON         switch    off      use the pure-Python wire
FASTMGR_SPIN_US            count     50       spin budget (µs) of a wait
                                              before it blocks, 0 to 10000
FASTMGR_SPIN_YIELD         switch    on       a spinner yields its CPU at
                                              every turn after a calm phase
FASTMGR_SPIN_POLICY        choice    full     ``full``: the spin policy with
                                              its rules; ``plain``: adaptive
                                              spin-then-block alone
FASTMGR_RING               switch    on       unix-socket connections may
                                              carry bytes in shared memory
FASTMGR_HANDSHAKE_TIMEOUT  duration  20.0     seconds an unauthenticated peer
                                              may take, 0.001 to 86400
=========================  ========  =======  ================================

``fastmgr serve`` reads its authkey from the variable ``--authkey-env``
names, ``AUTHKEY_VARIABLE`` by default (``authkey_from()``).  The build
reads ``FASTMGR_DEBUG`` and ``FASTMGR_CYTHON_ANNOTATE`` (switches, in
``setup.py``, which spells them the same way).
"""
import math
import os

from ._protocol import MAX_SPIN_US

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _raw(name):
    """The variable's text, stripped; None when unset or empty."""
    text = os.environ.get(name, "").strip()
    return text or None


def switch(name, default):
    """An on/off variable."""
    text = _raw(name)
    if text is None:
        return default
    if text.lower() in _ON:
        return True
    if text.lower() in _OFF:
        return False
    raise ValueError("%s=%r: expected one of %s (on) or %s (off)"
                     % (name, text, ", ".join(_ON), ", ".join(_OFF)))


def count(name, default, low, high):
    """A whole number from low to high."""
    text = _raw(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError("%s=%r: expected a whole number from %d to %d" % (name, text, low, high))
    return value


def duration(name, default, low, high):
    """A number of seconds from low to high."""
    text = _raw(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # also refuses nan
        raise ValueError("%s=%r: expected a number of seconds from %g to %g"
                         % (name, text, low, high))
    return value


def choice(name, default, words):
    """One of words (given in lower case)."""
    text = _raw(name)
    if text is None:
        return default
    if text.lower() in words:
        return text.lower()
    raise ValueError("%s=%r: expected one of %s" % (name, text, ", ".join(words)))


#: the pure-Python wire instead of the compiled one (_backend)
PUREPYTHON = switch("FASTMGR_PUREPYTHON", False)

#: the default spin budget of a wait, µs (overridden by the ``spin_us``
#: keyword of managers and servers, and by ``_wire.set_spin()``)
SPIN_US = count("FASTMGR_SPIN_US", 50, 0, MAX_SPIN_US)

#: whether a spinner yields its CPU at every turn once its calm phase is over
SPIN_YIELD = switch("FASTMGR_SPIN_YIELD", True)

#: "full": the spin policy with every rule that earned its place
#: (spin_policy.pxi); "plain": adaptive spin-then-block with the
#: machine-wide spinner slots, and nothing else
SPIN_POLICY = choice("FASTMGR_SPIN_POLICY", "full", ("full", "plain"))

#: whether connections over unix sockets may carry their bytes through
#: shared-memory rings (connection.py)
RING = switch("FASTMGR_RING", True)

#: how long an unauthenticated peer may take over the handshake, seconds
HANDSHAKE_TIMEOUT = duration("FASTMGR_HANDSHAKE_TIMEOUT", 20.0, 0.001, 86400.0)

#: the variable ``fastmgr serve`` reads its authkey from, unless told another
AUTHKEY_VARIABLE = "FASTMGR_AUTHKEY"


def authkey_from(variable):
    """The authkey held in the environment variable named ``variable``, as
    bytes; None if it is unset or empty.  Read when asked, not at import:
    a secret is kept no longer than needed."""
    value = os.environ.get(variable)
    return os.fsencode(value) if value else None
