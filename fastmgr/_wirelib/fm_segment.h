/* The machine-wide spinner slots and catch counters (fm_spin.h) live in a
   System V shared memory segment of the user's own, found by a key made
   from the uid (spin_segment.pxi maps it).  Declared in chelpers.pxd.

   Why a System V segment, not a file in /dev/shm: its size is fixed when it
   is made, so no one can shrink it under a process that maps it (a file
   can be truncated by anyone who may write it, and every process mapping it
   then dies of SIGBUS at its next look), and no path is followed (a
   symlink planted by another user cannot lead us to write elsewhere).  A
   memfd would be safe too, but unrelated processes cannot find one.

   A segment under the key is used only if this user made it and owns it
   (shm_perm.cuid and uid: the creator cannot be changed afterwards, so
   another user cannot make one and give it away), its mode is 0600, its
   size ours, and its first word FM_SEGMENT_MAGIC, or 0 in a segment just
   made.  Anything else (another user made it first, or another layout)
   is FM_SEGMENT_FOREIGN; no System V shared memory at all is
   FM_SEGMENT_NONE.  Either way spinners are then counted per process. */
#ifndef FM_SEGMENT_H
#define FM_SEGMENT_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#define FM_SEGMENT_NONE 1
#define FM_SEGMENT_FOREIGN 2
#define FM_SEGMENT_MAGIC 0x314e495053474d46ULL   /* "FMGSPIN1": this layout */

/* The key of uid's segment; a new layout must change it (and the magic). */
static inline int fm_segment_key(uint32_t uid) {
    uint32_t k = (0x2f4d5332u ^ (uid * 2654435761u)) & 0x7fffffffu;
    return k ? (int)k : 1;   /* 0 is IPC_PRIVATE */
}

/* Attach the segment of key, making it if there is none: its address, or
   NULL with *why FM_SEGMENT_NONE or FM_SEGMENT_FOREIGN. */
static void *fm_segment_attach(int key, size_t size, int *why) {
    uid_t me = geteuid();
    struct shmid_ds ds;
    uint64_t first = 0;
    void *mem;
    int id = shmget((key_t)key, size, IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0 && errno == EEXIST)
        id = shmget((key_t)key, 0, 0);
    if (id < 0) {
        *why = errno == EACCES ? FM_SEGMENT_FOREIGN : FM_SEGMENT_NONE;
        return NULL;
    }
    mem = shmat(id, NULL, 0);
    if (mem == (void *)-1) {
        *why = errno == EACCES ? FM_SEGMENT_FOREIGN : FM_SEGMENT_NONE;
        return NULL;
    }
    /* checked once attached, so that what is checked is what is mapped */
    if (shmctl(id, IPC_STAT, &ds) != 0 || ds.shm_perm.cuid != me || ds.shm_perm.uid != me
            || (ds.shm_perm.mode & 0777) != 0600 || ds.shm_segsz != size
            || !(__atomic_compare_exchange_n((uint64_t *)mem, &first, FM_SEGMENT_MAGIC, 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
                 || first == FM_SEGMENT_MAGIC)) {
        shmdt(mem);
        *why = FM_SEGMENT_FOREIGN;
        return NULL;
    }
    return mem;
}

#endif
