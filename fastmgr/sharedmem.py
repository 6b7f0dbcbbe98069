"""SharedMemoryManager: a manager that also tracks shared memory blocks and
unlinks them when it shuts down."""
import os
from multiprocessing import resource_tracker, shared_memory, util

from .managers import BaseManager, _check_initial
from .server import Control, Server

__all__ = ["SharedMemoryManager", "SharedMemoryServer"]


class _SegmentTracker:
    """The names of the blocks a SharedMemoryServer unlinks at shutdown."""

    def __init__(self, name, segment_names=None):
        self.shared_memory_context_name = name
        self.segment_names = list(segment_names or [])

    def register_segment(self, segment_name):
        self.segment_names.append(segment_name)

    def destroy_segment(self, segment_name):
        self.segment_names.remove(segment_name)
        segment = shared_memory.SharedMemory(segment_name)
        segment.close()
        segment.unlink()

    def unlink(self):
        for segment_name in self.segment_names[:]:
            self.destroy_segment(segment_name)

    def __del__(self):
        self.unlink()

    def __getstate__(self):
        return (self.shared_memory_context_name, self.segment_names)

    def __setstate__(self, state):
        self.__init__(*state)


class SharedMemoryControl(Control):
    exposed = Control.exposed | {"track_segment", "release_segment", "list_segments"}

    def track_segment(self, segment_name):
        self._server.shared_memory_context.register_segment(segment_name)

    def release_segment(self, segment_name):
        self._server.shared_memory_context.destroy_segment(segment_name)

    def list_segments(self):
        return self._server.shared_memory_context.segment_names


class SharedMemoryServer(Server):
    control_class = SharedMemoryControl

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        address = self.address
        if isinstance(address, bytes):
            address = os.fsdecode(address)
        self.shared_memory_context = _SegmentTracker("shm_%s_%d" % (address, os.getpid()))

    def create(self, session, typeid, /, *args, **kwargs):
        if hasattr(self.registry[typeid][-1], "_shared_memory_proxy"):
            kwargs["shared_memory_context"] = self.shared_memory_context
        return super().create(session, typeid, *args, **kwargs)

    def shutdown(self):
        self.shared_memory_context.unlink()
        super().shutdown()


class SharedMemoryManager(BaseManager):
    """A manager that creates SharedMemory blocks and ShareableLists and
    unlinks them when it shuts down."""

    _Server = SharedMemoryServer

    def __init__(self, *args, **kwargs):
        if os.name == "posix":
            # one resource tracker for this process and the manager (bpo-36867)
            resource_tracker.ensure_running()
        super().__init__(*args, **kwargs)
        util.debug("%s created by pid %d", type(self).__name__, os.getpid())

    def get_server(self):
        _check_initial(self._state)
        return self._Server(self._registry, self._address, self._authkey, self._serializer)

    def _tracked(self, block, shm):
        try:
            self._peer().control("track_segment", shm.name)
        except BaseException:
            shm.unlink()
            raise
        return block

    def SharedMemory(self, size):
        """A new SharedMemory block of size bytes, tracked by the manager."""
        shm = shared_memory.SharedMemory(None, create=True, size=size)
        return self._tracked(shm, shm)

    def ShareableList(self, sequence):
        """A new ShareableList of sequence's values, tracked by the manager."""
        sl = shared_memory.ShareableList(sequence)
        return self._tracked(sl, sl.shm)
