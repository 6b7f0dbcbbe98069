"""SyncManager behaviour, written once and run on the stdlib and on fastmgr.

Where Python 3.14 added something (set(), list.clear/copy, dict |, locked()),
the stdlib of older Pythons lacks it: those tests skip for the stdlib only
when it does not have the feature, and always run for fastmgr.
"""
import collections.abc
import copy
import gc
import pickle
import queue
import re
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(60)


def needs(manager, name):
    if not hasattr(manager, name):
        pytest.skip("this Python's stdlib manager has no %s()" % name)


def test_namespace_rules(manager):
    ns = manager.Namespace()
    ns.x = 10
    ns.y = "hello"
    ns._z = 12.3
    assert str(ns) == "Namespace(x=10, y='hello')"
    assert ns.x == 10 and ns._z == 12.3
    del ns.x
    with pytest.raises(AttributeError):
        ns.x
    assert repr(ns).startswith("<NamespaceProxy object, typeid 'Namespace' at 0x")


def test_list_proxy(manager):
    l = manager.list([i * i for i in range(10)])
    assert str(l) == str([i * i for i in range(10)])
    assert re.fullmatch(r"<ListProxy object, typeid 'list' at 0x[0-9a-f]+>", repr(l))
    assert l[4] == 16 and l[2:5] == [4, 9, 16] and l[-1] == 81
    assert len(l) == 10 and 9 in l and 10 not in l
    assert list(l) == [i * i for i in range(10)]
    assert list(reversed(l))[0] == 81
    l2 = l
    l += [100]
    assert l is l2 and l[-1] == 100
    l *= 2
    assert l is l2 and len(l) == 22
    assert l + [1] == l._getvalue() + [1]
    assert l * 2 == l._getvalue() * 2
    l[0] = "zero"
    del l[1]
    assert l[0] == "zero" and l[1] == 4
    l.sort(key=str)
    with pytest.raises(IndexError):
        l[1000]
    assert copy.deepcopy(l) == l._getvalue()


def test_list_additions(manager):
    l = manager.list([1, 2])
    if not hasattr(list, "copy") or "copy" not in type(l)._exposed_:
        pytest.skip("this Python's stdlib ListProxy has no copy()/clear()")
    assert l.copy() == [1, 2]
    l.clear()
    assert len(l) == 0


def test_dict_proxy(manager):
    d = manager.dict({"a": 1})
    d["b"] = 2
    assert d["a"] == 1 and d.get("zz", 5) == 5 and len(d) == 2
    assert sorted(d.keys()) == ["a", "b"] and sorted(d.items()) == [("a", 1), ("b", 2)]
    assert sorted(d) == ["a", "b"]  # iteration goes through an Iterator proxy
    assert "a" in d and d.pop("a") == 1 and "a" not in d
    with pytest.raises(KeyError) as info:
        d["missing"]
    assert info.value.args == ("missing",)
    d.update(c=3)
    assert d.setdefault("c", 9) == 3
    assert str(d) == str(d._getvalue())


def test_dict_additions(manager):
    d = manager.dict({"a": 1})
    if "__or__" not in type(d)._exposed_:
        pytest.skip("this Python's stdlib DictProxy has no |")
    assert d | {"b": 2} == {"a": 1, "b": 2}
    d2 = d
    d |= {"c": 3}
    assert d is d2 and d._getvalue() == {"a": 1, "c": 3}
    assert list(reversed(d)) == ["c", "a"]


def test_set_proxy(manager):
    needs(manager, "set")
    s = manager.set([1, 2])
    s.add(3)
    assert 3 in s and len(s) == 3 and sorted(s) == [1, 2, 3]
    s2 = s
    s |= {4}
    s -= {1}
    assert s is s2 and s._getvalue() == {2, 3, 4}
    assert s & {2, 9} == {2}
    with pytest.raises(KeyError):
        s.remove(99)


def test_abc_registration(impl, manager):
    """Python 3.14 registers the container proxies with collections.abc."""
    l, d = manager.list(), manager.dict()
    if impl.__name__ != "fastmgr" and not isinstance(l, collections.abc.MutableSequence):
        pytest.skip("this Python's stdlib does not register proxies with collections.abc")
    assert isinstance(l, collections.abc.MutableSequence)
    assert isinstance(d, collections.abc.MutableMapping)
    if hasattr(manager, "set"):
        assert isinstance(manager.set(), collections.abc.MutableSet)


def test_value_and_array(manager):
    v = manager.Value("i", 3)
    v.value += 1
    assert v.value == 4 and v.get() == 4
    a = manager.Array("i", range(5))
    assert len(a) == 5 and a[2] == 2
    a[2] = 9
    assert a[2] == 9 and list(a) == [0, 1, 9, 3, 4]


def test_queue(manager):
    q = manager.Queue()
    q.put(1)
    q.put("two")
    assert q.qsize() == 2 and q.get() == 1 and q.get(timeout=1) == "two"
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    jq = manager.JoinableQueue()
    jq.put(1)
    jq.get()
    jq.task_done()
    jq.join()


def test_locks(manager):
    for factory in (manager.Lock, manager.RLock, manager.Semaphore, manager.BoundedSemaphore):
        lock = factory()
        assert lock.acquire() is True
        lock.release()
        with lock:
            pass
        assert lock.acquire(timeout=1) is True
        lock.release()
    lock = manager.Lock()
    if "locked" in type(lock)._exposed_:
        assert lock.locked() is False
        lock.acquire()
        assert lock.locked() is True
        lock.release()
        rlock = manager.RLock()
        assert rlock.locked() is False
        with rlock:
            assert rlock.locked() is True
    elif manager.__module__.startswith("fastmgr"):
        pytest.fail("fastmgr's lock proxies must have locked()")
    lock.acquire()
    assert lock.acquire(blocking=False) is False
    lock.release()
    with pytest.raises(ValueError):
        manager.BoundedSemaphore(1).release()


def test_event_condition_barrier(manager):
    event = manager.Event()
    assert not event.is_set() and event.wait(0.01) is False
    event.set()
    assert event.is_set() and event.wait(1) is True
    cond = manager.Condition()
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: True) is True
    barrier = manager.Barrier(2, timeout=5)
    assert barrier.parties == 2 and barrier.n_waiting == 0 and not barrier.broken
    results = []
    t = threading.Thread(target=lambda: results.append(barrier.wait()))
    t.start()
    results.append(barrier.wait())
    t.join(5)
    assert sorted(results) == [0, 1]


def test_pool(manager):
    with manager.Pool(2) as pool:
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        assert pool.apply(abs, (-4,)) == 4
        assert pool.apply_async(abs, (-5,)).get(timeout=10) == 5
        assert sorted(pool.imap_unordered(abs, [-1, -2])) == [1, 2]


def test_remote_error_types(manager):
    d = manager.dict()
    with pytest.raises(KeyError):
        d["nope"]
    l = manager.list()
    with pytest.raises(IndexError):
        l.pop()
    with pytest.raises(ValueError):
        l.index(1)


def test_getvalue_and_str_fallbacks(manager):
    l = manager.list([1, 2])
    assert l._getvalue() == [1, 2]
    assert str(l) == "[1, 2]"


def test_proxy_pickles_within_process(manager):
    l = manager.list([1])
    l2 = pickle.loads(pickle.dumps(l))
    l2.append(2)
    assert l[:] == [1, 2]


def test_nested_proxies(manager):
    outer = manager.dict()
    inner = manager.list([1])
    outer["inner"] = inner
    got = outer["inner"]
    got.append(2)
    assert inner[:] == [1, 2]


def test_number_of_objects_after_del(manager):
    # proxies of earlier tests caught in reference cycles must not die (and
    # decref their objects) between the baseline and the count after it
    gc.collect()
    gc.disable()
    try:
        baseline = manager._number_of_objects()
        l = manager.list()
        assert manager._number_of_objects() == baseline + 1
    finally:
        gc.enable()
    del l
    deadline = time.monotonic() + 5
    while manager._number_of_objects() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager._number_of_objects() == baseline
    assert isinstance(manager._debug_info(), str)
