"""The example in the README: one benchmark, both implementations."""


def test_dict_set(benchmark, manager_impl):
    with manager_impl.SyncManager() as manager:
        d = manager.dict()
        benchmark(d.__setitem__, "key", 1)
    assert manager_impl.name in ("stdlib", "fastmgr")
