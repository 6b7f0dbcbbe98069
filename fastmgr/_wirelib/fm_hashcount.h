/* Keys per exact hash value of a dict being decoded without pickle
   (SAME_HASH_MAX in _protocol.py; codec.pxi).  Open addressing over a
   keyed mix of the hash (fm_hash_seed, random per process), so that keys
   crafted to collide in the dict do not collide in this table too.  A slot
   whose count is 0 is free.  Declared in chelpers.pxd. */
#ifndef FM_HASHCOUNT_H
#define FM_HASHCOUNT_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    Py_hash_t hash;
    uint32_t count;
} fm_hash_slot;

static uint64_t fm_hash_seed = 0;

/* One more key of hash h in slots[0..mask] (mask + 1 a power of two, at
   least twice the keys counted); returns how many of that hash so far. */
static inline uint32_t fm_hash_count(fm_hash_slot *slots, size_t mask, Py_hash_t h) {
    uint64_t x = (uint64_t)h ^ fm_hash_seed;
    size_t i;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    i = (size_t)x & mask;
    while (slots[i].count && slots[i].hash != h)
        i = (i + 1) & mask;
    slots[i].hash = h;
    return ++slots[i].count;
}

#endif
