# The compiled wire's own C helpers, in the .h files beside this one.

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "fm_bytes.h" nogil:
    # little-endian values of the codec, big-endian frame lengths
    void fm_put_u32le(unsigned char* p, uint32_t v)
    void fm_put_u64le(unsigned char* p, uint64_t v)
    uint32_t fm_get_u32le(const unsigned char* p)
    uint64_t fm_get_u64le(const unsigned char* p)
    void fm_put_i32be(unsigned char* p, uint32_t v)
    uint64_t fm_get_u64be(const unsigned char* p)
    int fm_get_i32be(const unsigned char* p)
    uint64_t fm_double_bits(double d)
    double fm_bits_double(uint64_t u)

cdef extern from "fm_sync.h" nogil:
    long fm_load(long* p)
    void fm_store(long* p, long v)
    bint fm_again(int e)
    void fm_set_errno(int e)

cdef extern from "fm_spin.h" nogil:
    int fm_max_spinners             # spinners of this process that may spin at once
    int fm_spin_enter()
    void fm_spin_leave()
    int64_t* fm_slots               # the machine-wide spinner slots, or NULL
    int fm_slot_max                 # how many of them a spinner scans
    int fm_slot_enter()             # 0: no slot; else SLOT_UNCROWDED or SLOT_CROWDED
    void fm_slot_leave()
    int fm_move_off_cpu()
    enum: FM_CPUS
    uint64_t* fm_counts             # messages caught per CPU
    uint64_t* fm_cpu_count(int cpu)
    uint64_t fm_count_read(uint64_t* count)
    void fm_count_catch()

cdef extern from "fm_hashcount.h" nogil:
    ctypedef struct fm_hash_slot:      # keys counted per hash value (codec.pxi)
        Py_hash_t hash
        uint32_t count
    uint64_t fm_hash_seed              # keys the table's mix: random per process
    uint32_t fm_hash_count(fm_hash_slot* slots, size_t mask, Py_hash_t h)

cdef extern from "fm_segment.h" nogil:
    int fm_segment_key(uint32_t uid)                    # the System V key of uid's segment
    void* fm_segment_attach(int key, size_t size, int* why)  # NULL: see why
    enum: FM_SEGMENT_NONE                               # no System V shared memory here
    enum: FM_SEGMENT_FOREIGN                            # a segment not this user's own

cdef extern from "fm_ring.h" nogil:
    ctypedef struct fm_ring:
        uint32_t reader_waiting
        uint32_t writer_waiting
    unsigned int FM_RING_CAP
    int64_t fm_ring_readable(fm_ring* r, uint64_t head)
    bint fm_detour_pending(fm_ring* r)
    bint fm_detour_here(fm_ring* r, uint64_t head)
    bint fm_rx_ready(fm_ring* r, uint64_t head)
    bint fm_ring_from_here(fm_ring* r)
    uint64_t fm_detour_len(fm_ring* r)
    void fm_detour_announce(fm_ring* r, uint64_t at, uint64_t length)
    void fm_detour_done(fm_ring* r)
    int64_t fm_ring_writable(fm_ring* r, uint64_t tail)
    void fm_ring_take(fm_ring* r, uint64_t* head, unsigned char* dst, size_t n)
    void fm_ring_put(fm_ring* r, uint64_t* tail, const unsigned char* src, size_t n)
    void fm_flag_set(uint32_t* flag, uint32_t v)
    int fm_flag_seen(uint32_t* flag)

cdef extern from "fm_codec.h":
    bint fm_ascii(const unsigned char* p, size_t n) nogil
    int fm_dict_set(object d, object k, object v)  # -1 with an exception set
    object fm_take_error()
    ctypedef struct fm_key_cache:
        pass
    enum:
        FM_KEY_MAX_LEN
        FM_KEY_DICT_MAX
    object fm_key(fm_key_cache* cache, const unsigned char* p, size_t n)
    void fm_key_cache_clear(fm_key_cache* cache)

cdef extern from "fm_memory.h" nogil:
    void fm_advise_huge(char* p, size_t n)
