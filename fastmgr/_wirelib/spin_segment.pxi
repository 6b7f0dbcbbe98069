# The machine-wide spinner slots and catch counters (fm_spin.h), mapped
# from a System V segment of the user's own (fm_segment.h says why that,
# and what makes a segment the user's own); included by _wire.pyx.  The
# spin policy (spin_policy.pxi) only reads and writes what is mapped here.

# the segment: a 64-byte header (the magic word), the slots, the counters
cdef size_t SPIN_SEGMENT_BYTES = 64 + MAX_SLOTS * 8 + FM_CPUS * 64

# where client spinners are counted: "machine" (the segment) or "process"
cdef str g_spin_sharing = "process"


def spin_segment(uid):
    """(System V IPC key, size in bytes) of user uid's spinner segment."""
    return fm_segment_key(uid), SPIN_SEGMENT_BYTES


def spin_sharing():
    """Where client spinners are counted: "machine" (in a segment shared by
    the user's processes) or "process" (there was none to be had, or the
    one found was not the user's own)."""
    return g_spin_sharing


def _spin_slot_probe():
    """For tests: what a spinner would get now from fm_slot_enter() (0 when
    no slot is free), the slot given back at once."""
    cdef int slot = fm_slot_enter()
    if slot:
        fm_slot_leave()
    return slot


cdef void _map_slots() noexcept:
    """Map the segment's slots and counters; without them, client spinners
    and catches are counted per process.  A segment that is not the user's
    own is ignored with one warning (logger "fastmgr")."""
    global fm_slots, fm_counts, g_spin_sharing
    cdef int why = 0
    cdef int key = fm_segment_key(_os.geteuid())
    cdef char* mem = <char*>fm_segment_attach(key, SPIN_SEGMENT_BYTES, &why)
    if mem != NULL:
        fm_slots = <int64_t*>(mem + 64)
        fm_counts = <uint64_t*>(mem + 64 + MAX_SLOTS * 8)
        g_spin_sharing = "machine"
    elif why == FM_SEGMENT_FOREIGN:
        try:
            _logging.getLogger("fastmgr").warning(
                "the System V shared memory segment of key %#x, where this user's fastmgr "
                "processes count their spinners, was not made by this user (or is of another "
                "version): it is left alone, and spinners are counted per process", key)
        except Exception:
            pass


_map_slots()
