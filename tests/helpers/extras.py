"""Module-level helpers for child processes of test_extras.py."""


def append_from_child(outer, key, value):
    outer[key].append(value)


def report_managers_module(result):
    import multiprocessing.managers as m
    result.append(m.SyncManager.__module__)


class Tracked:
    """Writes a line to a file when it dies: shows a referent was freed."""

    def __init__(self, path):
        self.path = path

    def ping(self):
        return "pong"

    def __del__(self):
        with open(self.path, "a") as f:
            f.write("freed\n")


import multiprocessing.managers as _std  # noqa: E402

import fastmgr as _fm  # noqa: E402


class StdTracking(_std.SyncManager):
    pass


class FastTracking(_fm.SyncManager):
    pass


StdTracking.register("Tracked", Tracked)
FastTracking.register("Tracked", Tracked)
TRACKING = {"multiprocessing.managers": StdTracking, "fastmgr": FastTracking}
