# The system calls and CPython functions the compiled wire uses that
# Cython's own declarations (libc, posix, cpython) do not cover.

from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    Py_ssize_t PY_SSIZE_T_MAX
    Py_ssize_t Py_SIZE(object o)
    # strings: ASCII ones are made and read straight (codec_items.pxi)
    object PyUnicode_New(Py_ssize_t size, unsigned int maxchar)
    void* PyUnicode_DATA(object o)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    # the collector (codec.pxi keeps it off containers while they fill)
    ctypedef struct PyTypeObject
    PyTypeObject* Py_TYPE(object o)
    bint PyType_IS_GC(PyTypeObject* t)
    bint PyObject_GC_IsTracked(object o)
    void PyObject_GC_UnTrack(object o)
    void PyObject_GC_Track(object o)
    bint PyErr_ExceptionMatches(object exc)
    PyObject* PyErr_Occurred()
    # a dict sized for its entries at once (private, in every CPython from 3.10)
    dict _new_dict "_PyDict_NewPresized"(Py_ssize_t minused)
    # the items of big containers made as C (codec_items.pxi): a new
    # reference, or NULL with an exception set
    PyObject* _new_float "PyFloat_FromDouble"(double v)
    PyObject* _new_int "PyLong_FromLongLong"(long long v)
    PyObject* _new_str "PyUnicode_New"(Py_ssize_t size, unsigned int maxchar)
    void* _str_data "PyUnicode_DATA"(PyObject* o)
    PyObject* _none "Py_None"
    PyObject* _true "Py_True"
    PyObject* _false "Py_False"
    void Py_XINCREF(PyObject* o)
    void Py_XDECREF(PyObject* o)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    enum: POLLIN
    enum: POLLOUT

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    enum: MSG_DONTWAIT
    enum: MSG_NOSIGNAL
    enum: MSG_PEEK

cdef extern from "<sched.h>" nogil:
    int sched_yield()
    int sched_getcpu()

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum: EPOLLIN
    enum: EPOLL_CTL_ADD
    enum: EPOLL_CTL_DEL
    enum: EPOLL_CLOEXEC

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum: EFD_CLOEXEC
    enum: EFD_NONBLOCK

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)
    ssize_t c_read "read"(int fd, void* buf, size_t n)
    ssize_t c_write "write"(int fd, const void* buf, size_t n)
    int usleep(unsigned int usec)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum: CLOCK_MONOTONIC
