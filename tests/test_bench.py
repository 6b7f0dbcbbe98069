"""`python -m fastmgr bench`'s throughput rows: measured together, so that
8 clients compare with 2 in the same stretch of time (no timing asserted)."""
import io

import pytest

from fastmgr import _bench

pytestmark = pytest.mark.timeout(120)


def test_client_rows_are_measured_together(monkeypatch):
    calls = []
    real = _bench.measure_clients

    def spy(ops, scale=1.0, windows=3):
        calls.append([op.name for op in ops])
        return real(ops, scale, windows=2)

    monkeypatch.setattr(_bench, "measure_clients", spy)
    rows = _bench.run(ops=["throughput, 1 client", "throughput, 2 clients"], scale=0.1,
                      progress=io.StringIO())
    assert calls == [["throughput, 1 client", "throughput, 2 clients"]]
    assert [row["op"] for row in rows] == ["throughput, 1 client", "throughput, 2 clients"]
    for row in rows:
        assert row["unit"] == "calls/s"
        assert row["stdlib"] > 0 and row["fastmgr"] > 0
        assert row["speedup"] == pytest.approx(row["fastmgr"] / row["stdlib"])


def test_clients_windows_alternate_and_reverse(monkeypatch):
    order = []

    class FakeClients:
        def __init__(self, impl, manager, n):
            self.key = (n, impl)

        def run(self, seconds=None, calls=None):
            order.append(self.key)
            return 1.0 + len(order)

        def close(self):
            pass

    class FakeManager:
        def shutdown(self):
            pass

    monkeypatch.setattr(_bench, "Clients", FakeClients)
    monkeypatch.setattr(_bench, "start_manager", lambda impl, address: FakeManager())
    ops = [op for op in _bench.OPS if op.kind == "clients" and op.n in (2, 8)]
    results = _bench.measure_clients(ops, windows=2)
    forward = [(2, "stdlib"), (2, "fastmgr"), (8, "stdlib"), (8, "fastmgr")]
    assert order == forward + forward[::-1]
    assert set(results) == {"throughput, 2 clients", "throughput, 8 clients"}
    assert results["throughput, 2 clients"]["stdlib"] == (2.0 + 9.0) / 2
