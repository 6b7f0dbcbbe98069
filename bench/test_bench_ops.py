"""The ops of ``python -m fastmgr bench`` (fastmgr/_bench.py) as a
pytest-benchmark suite: one benchmark group per op, each holding the stdlib
and fastmgr.  See README.md here for how to run and read it."""
import re

import pytest

from fastmgr import _bench, _bench_aio

TIME_OPS = [op for op in _bench.OPS if op.kind == "time"]
CLIENT_OPS = [op for op in _bench.OPS if op.kind == "clients"]
AIO_OPS = [op for op in _bench.OPS if op.kind == "aio"]
FLOOR_OPS = [op for op in TIME_OPS if op.floor is not None]
CALLS_PER_CLIENT = 2000


def _slug(name):
    return re.sub(r"\W+", "-", name).strip("-")


@pytest.fixture(params=_bench.IMPLEMENTATIONS)
def impl(request):
    return request.param


@pytest.mark.parametrize("op", TIME_OPS, ids=[_slug(op.name) for op in TIME_OPS])
def test_op(benchmark, managers, op, impl):
    benchmark.group = op.name
    manager = managers(impl, op.address, op.pinned)
    try:
        fn = op.setup(manager, impl)
    except _bench.Skip as exc:
        pytest.skip(str(exc))
    if op.pinned:
        with _bench.pinned_to_one_cpu([manager._process.pid]):
            benchmark(fn)
    else:
        benchmark(fn)


@pytest.mark.parametrize("op", FLOOR_OPS, ids=[_slug(op.name) for op in FLOOR_OPS])
def test_socket_floor(benchmark, op):
    """The bare socketpair round trip moving the same bytes, in the op's group."""
    benchmark.group = op.name
    floor = _bench.SocketFloor(op.floor.size, op.floor.both_ways)
    try:
        benchmark(floor.call)
    finally:
        floor.close()


@pytest.mark.parametrize("op", CLIENT_OPS, ids=[_slug(op.name) for op in CLIENT_OPS])
def test_throughput(benchmark, managers, op, impl):
    """Time for op.n client processes to make CALLS_PER_CLIENT calls each,
    all at once; extra_info["calls_per_s"] is their total rate."""
    benchmark.group = op.name
    gang = _bench.Clients(impl, managers(impl), op.n)
    rates = []
    try:
        benchmark.pedantic(lambda: rates.append(gang.run(calls=CALLS_PER_CLIENT)),
                           rounds=5, warmup_rounds=1)
    finally:
        gang.close()
    benchmark.extra_info["calls_per_s"] = sorted(rates)[len(rates) // 2]


def test_manager_startup(benchmark, impl):
    benchmark.group = "manager start-up"
    benchmark.pedantic(_bench.startup_once, args=(impl,), rounds=10, warmup_rounds=1)


@pytest.mark.parametrize("op", AIO_OPS, ids=[_slug(op.name) for op in AIO_OPS])
def test_aio(benchmark, managers, op, impl):
    """A round: op.n awaits (one at a time, or gathers of 1,000) on a loop
    of op.loop's kind; extra_info["ops_per_round"] says how many."""
    benchmark.group = op.name
    batch = op.setup(managers(impl), impl)
    loop = _bench_aio.new_loop(op.loop)
    try:
        loop.run_until_complete(batch(max(1, op.n // 10)))
        benchmark.pedantic(loop.run_until_complete, setup=lambda: ((batch(op.n),), {}),
                           rounds=5, warmup_rounds=1)
        benchmark.extra_info["ops_per_round"] = op.n
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
