"""Loads the native codec library (cffi, ABI mode) and refuses one of another
version.  The declarations below mirror native/include/ggzip.h."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cffi

from ..errors import GGZipError

# The version this binding was written for: ggz_version_number() must match.
EXPECTED_VERSION = (0, 8, 0)

CDEF = """
typedef struct { int layout; size_t row_size; size_t chunk_size; int n_threads; int trellis; } ggz_params;
typedef struct {
    int version; int layout; uint64_t raw_size; uint64_t frame_size;
    uint32_t row_size; uint32_t rows_per_chunk; uint32_t n_chunks; uint32_t n_streams;
    uint64_t chunk_raw_size; uint32_t flags;
} ggz_frame_info;
int ggz_is_error(size_t code);
int ggz_error_code(size_t code);
const char * ggz_error_name(size_t code);
unsigned ggz_version_number(void);
const char * ggz_kernel_name(void);
const char * ggz_encoder_kernel_name(void);
int ggz_kernel_count(void);
const char * ggz_kernel_info(int i, int * available, int * has_encoder);
size_t ggz_set_kernel(const char * name);
const char * ggz_kernel_forced_error(void);
size_t ggz_frame_bound(size_t raw_size, const ggz_params * params);
size_t ggz_rows_per_chunk(size_t raw_size, const ggz_params * params);
size_t ggz_encode_tensor(void * dst, size_t dstCapacity, const void * src, size_t raw_size, const ggz_params * params);
size_t ggz_frame_info_get(const void * src, size_t srcSize, ggz_frame_info * info);
size_t ggz_decode_tensor(void * dst, size_t dstCapacity, const void * src, size_t srcSize, int n_threads, int64_t * bad_chunk);
size_t ggz_decode_chunk(void * dst, size_t dstCapacity, const void * src, size_t srcSize, uint32_t index);
size_t ggz_verify_tensor(const void * src, size_t srcSize, int64_t * bad_chunk);
uint32_t ggz_crc32c(uint32_t crc, const void * buf, size_t size);
double ggz_entropy_bound(const void * src, size_t raw_size, int layout, size_t row_size);
size_t ggz_tcq_quantize(const float * w, size_t rows, size_t cols, const float * steps, size_t rows_per_chunk, float mu, const float * bits, int8_t * q, uint64_t * counts);
size_t ggz_tcq_feedback(const float * w, size_t rows, size_t cols, const float * steps, size_t rows_per_chunk, const float * u, int8_t * q, uint64_t * counts);
typedef struct ggz_reader ggz_reader;
size_t ggz_reader_open(ggz_reader ** out, const void * src, size_t srcSize);
void ggz_reader_free(ggz_reader * r);
void ggz_reader_info(const ggz_reader * r, ggz_frame_info * info);
size_t ggz_reader_check(const ggz_reader * r, int64_t * bad_chunk);
size_t ggz_reader_scratch_size(const ggz_reader * r);
size_t ggz_reader_decode_chunk(const ggz_reader * r, uint32_t index, void * dst, size_t dstCapacity, void * scratch);
size_t ggz_reader_decode_pair(const ggz_reader * r, uint32_t index, void * const dst[2], size_t dstCapacity,
                              void * const scratch[2], int64_t * bad_chunk);
const char * ggz_sparse_kernel_name(void);
size_t ggz_sparse_set_kernel(const char * name);
size_t ggz_sparse_qx_size(int64_t n);
void ggz_sparse_quantize(const float * x, int64_t n, void * qx);
void ggz_sparse_up(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                   const float * a, const float * thr, int64_t i0, int64_t i1, float * h);
int64_t ggz_sparse_select(const float * x, const float * thr, int64_t n, int32_t * idx);
void ggz_sparse_axpy(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                     const float * x, int64_t b0, int64_t b1, float * y);
void ggz_sparse_tmm(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                    int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)

_NAMES = {"linux": "libggzip.so", "darwin": "libggzip.dylib", "win32": "ggzip.dll"}


def _find_library() -> Path:
    env = os.environ.get("GGZIP_LIB")
    if env:
        return Path(env)
    name = _NAMES.get(sys.platform, "libggzip.so")
    here = Path(__file__).resolve().parent.parent
    for cand in (here / name,):
        if cand.exists():
            return cand
    # an editable install keeps the built library in site-packages/ggzip
    import importlib.util
    spec = importlib.util.find_spec("ggzip")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(loc) / name
        if cand.exists():
            return cand
    raise GGZipError(f"the native codec library {name} is not installed next to {here}; "
                     "reinstall ggzip with `pip install .` (or set GGZIP_LIB)")


def _load(expected=EXPECTED_VERSION):
    path = _find_library()
    try:
        lib = ffi.dlopen(str(path))
    except OSError as e:
        raise GGZipError(f"cannot load the native codec library {path}: {e}") from None
    v = lib.ggz_version_number()
    got = (v // 10000, v // 100 % 100, v % 100)
    if got != tuple(expected):
        want = ".".join(map(str, expected))
        raise GGZipError(f"native codec library {path} is version {'.'.join(map(str, got))}, "
                         f"but this ggzip Python package needs {want}; reinstall ggzip")
    return lib, path


lib, LIBRARY_PATH = _load()
