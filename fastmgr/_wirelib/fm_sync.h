/* Small system helpers of the compiled wire (declared in chelpers.pxd). */
#ifndef FM_SYNC_H
#define FM_SYNC_H

#include <errno.h>
#include <stdint.h>

/* flags shared between a hub's loop thread and its watchdog */
static inline long fm_load(long *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void fm_store(long *p, long v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

/* a non-blocking call found nothing to do */
static inline int fm_again(int e) { return e == EAGAIN || e == EWOULDBLOCK; }
static inline void fm_set_errno(int e) { errno = e; }

#endif
