/* Byte order helpers of the compiled wire (declared in chelpers.pxd).
   Values in the codec are little-endian; frame lengths are big-endian,
   as multiprocessing.connection writes them.  Byte by byte: any
   alignment, any host. */
#ifndef FM_BYTES_H
#define FM_BYTES_H

#include <stdint.h>
#include <string.h>

static inline void fm_put_u32le(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static inline void fm_put_u64le(unsigned char *p, uint64_t v) {
    fm_put_u32le(p, (uint32_t)v); fm_put_u32le(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t fm_get_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t fm_get_u64le(const unsigned char *p) {
    return (uint64_t)fm_get_u32le(p) | ((uint64_t)fm_get_u32le(p + 4) << 32);
}

static inline void fm_put_i32be(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static inline uint64_t fm_get_u64be(const unsigned char *p) {
    uint64_t v = 0; int i;
    for (i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static inline int32_t fm_get_i32be(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

static inline uint64_t fm_double_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
static inline double fm_bits_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

#endif
