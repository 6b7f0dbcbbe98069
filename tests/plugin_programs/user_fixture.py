"""What manager_impl gives, and that it gives the implementation it names."""
import multiprocessing.managers


def test_attributes(manager_impl):
    expected_module = {"stdlib": "multiprocessing.managers", "fastmgr": "fastmgr.sync"}
    assert manager_impl.SyncManager.__module__ == expected_module[manager_impl.name]
    assert issubclass(manager_impl.SyncManager, manager_impl.BaseManager)
    manager = manager_impl.Manager()
    try:
        assert isinstance(manager, manager_impl.SyncManager)
        assert manager.list([1, 2])[:] == [1, 2]
    finally:
        manager.shutdown()
    print("IMPL", manager_impl.name)


def test_registered_type(manager_impl):
    class Counter:
        def __init__(self):
            self.n = 0

        def increment(self):
            self.n += 1
            return self.n

    class MyManager(manager_impl.BaseManager):
        pass

    MyManager.register("Counter", Counter)
    with MyManager() as manager:
        counter = manager.Counter()
        counter.increment()
        assert counter.increment() == 2


def test_stdlib_is_the_stdlib_after_install(manager_impl):
    if manager_impl.name != "stdlib":
        return
    import fastmgr

    fastmgr.install()
    try:
        from fastmgr.pytest_plugin import load
        assert load("stdlib").SyncManager.__module__ == "multiprocessing.managers"
        assert multiprocessing.managers.SyncManager.__module__ == "fastmgr.sync"
    finally:
        fastmgr.uninstall()
