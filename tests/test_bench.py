"""`python -m fastmgr bench`: its throughput rows are measured together, so
that 8 clients compare with 2 in the same stretch of time; rows that need
numpy skip without it; the machine is described (no timing asserted)."""
import io
import os
import sys

import pytest

from fastmgr import _bench, _bench_machine

pytestmark = pytest.mark.timeout(120)


def test_client_rows_are_measured_together(monkeypatch):
    calls = []
    real = _bench.measure_clients

    def spy(ops, scale=1.0, windows=5):
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
    forward = [(2, "stdlib"), (8, "stdlib"), (2, "fastmgr"), (8, "fastmgr")]
    assert order == forward + forward[::-1]
    assert set(results) == {"throughput, 2 clients", "throughput, 8 clients"}
    assert results["throughput, 2 clients"]["stdlib"] == (2.0 + 9.0) / 2
    assert results["throughput, 8 clients"]["windows"]["fastmgr"] == [5.0, 6.0]


def test_8_against_2_clients_is_the_median_ratio_within_windows():
    """Each 8-client window is read against the 2-client window of its
    stretch of time, not the medians against each other."""
    def row(n, fastmgr_windows):
        return {"op": "throughput, %d clients" % n, "unit": "calls/s", "stdlib": 1.0,
                "fastmgr": sorted(fastmgr_windows)[1], "speedup": 1.0,
                "windows": {"stdlib": [1.0] * 3, "fastmgr": fastmgr_windows}}

    # medians 200 and 210 (0.95x), but window by window 8 clients get more
    rows = _bench._annotate([row(2, [100.0, 210.0, 300.0]), row(8, [110.0, 200.0, 330.0])])
    assert rows[1]["fastmgr_vs_2_clients"] == pytest.approx(1.1)
    assert rows[1]["note"] == "fastmgr: 1.10x its 2 clients"


def test_machine_is_described():
    import platform

    info = _bench.machine()
    text = _bench.describe_machine(info)
    assert platform.python_version() in text and platform.release() in text
    assert "%d of %d CPUs usable" % (info["cpus_usable"], info["cpus_online"]) in text
    assert info["cpu_model"] and info["cpu_model"] in text


def test_plot_states_the_machine(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (fastmgr[plot])")
    rows = [{"op": "dict get", "unit": "us", "stdlib": 40.0, "fastmgr": 8.0, "speedup": 5.0}]
    info = _bench.machine()
    fig = _bench.figure(rows, info)
    assert _bench.describe_machine(info) in [t.get_text() for t in fig.texts]
    path = tmp_path / "bench.png"
    _bench.plot(rows, str(path), info)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ndarray_rows_skip_without_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` fails
    rows = _bench.run(ops=["1 MiB ndarray, custom method"], scale=0.1, progress=io.StringIO())
    assert [row["op"] for row in rows] == ["1 MiB ndarray, custom method put+get"]
    assert "numpy" in rows[0]["skipped"]
    assert "skipped: " in _bench.format_table(rows)


def test_pinning_skips_a_thread_that_ended_meanwhile(monkeypatch):
    # a thread listed in /proc/PID/task may end before its mask is read
    gone = 2 ** 22 + 12345   # above any pid the kernel hands out
    monkeypatch.setattr(_bench_machine, "_threads", lambda pid: [gone, os.getpid()])
    before = os.sched_getaffinity(0)
    with _bench.pinned_to_one_cpu([]) as cpu:
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
