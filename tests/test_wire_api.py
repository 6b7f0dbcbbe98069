"""Both wires expose the whole API of fastmgr/_wire.pyi."""
import os
import re

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


def test_compiled_source_enum_agrees_with_protocol():
    """_wire.pyx repeats the tags and kinds as a cdef enum, invisible from
    Python: read them from the source."""
    import fastmgr

    path = os.path.join(os.path.dirname(fastmgr.__file__), "_wire.pyx")
    if not os.path.exists(path):
        pytest.skip("no _wire.pyx next to the package")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    found = dict(re.findall(r"^\s+((?:T|REQ|RESP)_[A-Z0-9_]+|MAX_SPIN_US)\s*=\s*(0x[0-9A-Fa-f]+|\d+)\s*$",
                            source, re.MULTILINE))
    expected = {name: value for name, value in vars(P).items()
                if re.match(r"((T|REQ|RESP)_[A-Z0-9_]+|MAX_SPIN_US)$", name)}
    assert set(found) == set(expected)
    for name, text in found.items():
        assert int(text, 0) == expected[name], name
