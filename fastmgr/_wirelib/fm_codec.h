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
