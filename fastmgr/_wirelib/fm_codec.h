/* Helpers of the codec (declared in chelpers.pxd): what Cython would
   write with more instructions per item of a big container. */
#ifndef FM_CODEC_H
#define FM_CODEC_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* whether the n bytes at p are all ASCII, eight at a time */
static inline int fm_ascii(const unsigned char *p, size_t n) {
    uint64_t acc = 0, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { memcpy(&w, p + i, 8); acc |= w; }
    for (; i < n; i++) acc |= p[i];
    return (acc & 0x8080808080808080ULL) == 0;
}

/* PyDict_SetItem, its failure (-1, an exception set) left to the caller
   to look at: no exception handling around every insertion */
static inline int fm_dict_set(PyObject *d, PyObject *k, PyObject *v) {
    return PyDict_SetItem(d, k, v);
}

/* The keys of small dicts, shared by the dicts a codec decodes: a dict of
   a few entries is most often one of many records with the same keys,
   each of which would otherwise make and hash copies of its own.  A slot
   holds a short ASCII str (a strong reference) or NULL; a key whose slot
   holds another takes it over. */
#define FM_KEY_SLOTS 512
#define FM_KEY_MAX_LEN 32   /* longer keys are not cached */
#define FM_KEY_DICT_MAX 64  /* the keys of larger dicts are not cached */

typedef struct {
    PyObject *slot[FM_KEY_SLOTS];
} fm_key_cache;

static inline size_t fm_key_slot(const unsigned char *p, size_t n) {
    uint32_t h = 2166136261u ^ (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h & (FM_KEY_SLOTS - 1);
}

/* the str of the n ASCII bytes at p as a new reference, from its slot if
   that holds it; NULL with an exception set when memory ran out */
static PyObject *fm_key(fm_key_cache *cache, const unsigned char *p, size_t n) {
    size_t i = fm_key_slot(p, n);
    PyObject *held = cache->slot[i], *fresh;
    if (held != NULL && (size_t)PyUnicode_GET_LENGTH(held) == n
            && memcmp(PyUnicode_DATA(held), p, n) == 0) {
        Py_INCREF(held);
        return held;
    }
    fresh = PyUnicode_New((Py_ssize_t)n, 127);
    if (fresh == NULL)
        return NULL;
    memcpy(PyUnicode_DATA(fresh), p, n);
    Py_INCREF(fresh);
    cache->slot[i] = fresh;
    Py_XDECREF(held);
    return fresh;
}

static void fm_key_cache_clear(fm_key_cache *cache) {
    for (size_t i = 0; i < FM_KEY_SLOTS; i++)
        Py_CLEAR(cache->slot[i]);
}

/* the pending exception, normalized, as a new reference; the error
   indicator is cleared */
static PyObject *fm_take_error(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) {
        Py_INCREF(Py_None);
        value = Py_None;
    }
    return value;
}

#endif
