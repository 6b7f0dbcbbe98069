"""Both wires expose the whole API of fastmgr/_wire.pyi."""
import pytest

from fastmgr import _protocol as P


@pytest.mark.parametrize("name", P.WIRE_API)
def test_exposes(wire, name):
    assert hasattr(wire, name)


def test_implementation_name(wire, request):
    assert wire.IMPLEMENTATION == request.node.callspec.params["wire"]


def test_classes_and_functions_are_callable(wire):
    for name in P.WIRE_API:
        if name != "IMPLEMENTATION":
            assert callable(getattr(wire, name)), name


def _protocol_constants():
    return {name: value for name, value in vars(P).items()
            if name.isupper() and not name.startswith("_")}


def test_exported_constants_agree_with_protocol(compiled_wire, python_wire):
    for wire in (compiled_wire, python_wire):
        for name, value in _protocol_constants().items():
            if hasattr(wire, name):
                assert getattr(wire, name) == value, "%s.%s" % (wire.__name__, name)


def test_backend_describe_names_the_wire():
    from fastmgr import _backend

    line = _backend.describe()
    assert _backend.wire.IMPLEMENTATION in line and _backend.wire.__file__ in line


#: _protocol.py's numbers that only Python code reads (the handshake's, and
#: the pickle protocol): every other one is compiled into _wire as well
PYTHON_ONLY = {"PROTOCOL_VERSION", "NONCE_SIZE", "DIGEST_SIZE", "MAX_HELLO",
               "MAX_HANDSHAKE_FRAME", "PICKLE_PROTOCOL", "DEFAULT_MAX_MESSAGE",
               "STDLIB_MESSAGE", "STDLIB_LEGACY_MESSAGE", "MD5_DIGEST_SIZE"}


def test_compiled_constants_agree_with_protocol(compiled_wire):
    """_wire.pxd repeats the protocol's numbers as a cdef enum, invisible
    from Python: _wire._constants() reports them as compiled."""
    compiled = compiled_wire._constants()
    numbers = {name for name, value in _protocol_constants().items()
               if type(value) is int and name not in PYTHON_ONLY}
    assert set(compiled) == numbers
    for name, value in compiled.items():
        assert value == getattr(P, name), name
