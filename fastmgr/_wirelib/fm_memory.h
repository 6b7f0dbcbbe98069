/* Memory for received out-of-band buffers (declared in chelpers.pxd). */
#ifndef FM_MEMORY_H
#define FM_MEMORY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* Ask for huge pages under the n bytes at p, about to be filled, where
   the kernel gives them transparently (the whole pages inside the range;
   a failure is no error).  Faulting a large buffer in by 4 KiB pages can
   cost more than copying the bytes into it. */
static void fm_advise_huge(char *p, size_t n) {
#ifdef MADV_HUGEPAGE
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)p + (uintptr_t)n) & ~(page - 1);
    if (end > start)
        madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

#endif
