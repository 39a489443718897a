"""ggzip.codec: the native rANS codec of tensor frames (docs/FORMAT.md).

    frame = encode(data, layout="q8_0", row_size=...)   # bytes
    arr   = decode(frame)                                # numpy uint8, zero copies of the input
    kernels(), kernel()                                  # SIMD kernels here / in use

Inputs may be bytes, bytearray, memoryview, mmap or contiguous numpy arrays; they
are passed to C without copying (ffi.from_buffer).  Every call releases the GIL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import constants as C
from ..errors import GGZipError
from ._native import LIBRARY_PATH, ffi, lib

__all__ = ["encode", "tcq_quantize", "tcq_feedback", "lane_order", "rows_per_chunk", "decode", "decode_chunk", "info", "verify", "entropy_bound", "crc32c",
           "kernels", "kernel", "encoder_kernel", "set_kernel", "bound", "CodecError",
           "FrameInfo", "LIBRARY_PATH"]


class CodecError(GGZipError):
    """A frame failed to encode or decode.  ``name`` is the ggz error
    (e.g. "CHECKSUM", "CORRUPT"), ``chunk`` the failing chunk or None."""

    def __init__(self, message: str, name: str, chunk: Optional[int] = None):
        super().__init__(message)
        self.name = name
        self.chunk = chunk


def _check(r: int, what: str, chunk: Optional[int] = None) -> int:
    if lib.ggz_is_error(r):
        code = lib.ggz_error_code(r)
        name = C.ERRORS[code] if 0 <= code < len(C.ERRORS) else "GENERIC"
        where = f" (chunk {chunk})" if chunk is not None and chunk >= 0 else ""
        raise CodecError(f"{what}: {ffi.string(lib.ggz_error_name(r)).decode()}{where}", name,
                         chunk if chunk is not None and chunk >= 0 else None)
    return r


def _buf(data):
    """A read-only cffi view of any buffer-protocol object, without a copy."""
    if isinstance(data, np.ndarray) and not data.flags.c_contiguous:
        raise ValueError("numpy input must be C-contiguous")
    return ffi.from_buffer(data)


def _layout_id(layout) -> int:
    if isinstance(layout, int):
        if layout not in C.LAYOUT_NAMES:
            raise ValueError(f"unknown layout id {layout}")
        return layout
    try:
        return C.LAYOUT_IDS[layout]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; one of {sorted(C.LAYOUT_IDS)}") from None


def _threads(threads: int) -> int:
    return threads if threads and threads > 0 else (os.cpu_count() or 1)


def _params(layout, row_size: int, chunk_size: int, threads: int, trellis: bool = False):
    p = ffi.new("ggz_params *")
    p.layout = _layout_id(layout)
    p.row_size = row_size
    p.chunk_size = chunk_size
    p.n_threads = threads
    p.trellis = 1 if trellis else 0
    return p


def bound(raw_size: int, layout="bytes", row_size: int = 0, chunk_size: int = 0) -> int:
    """Largest frame encode() can produce for raw_size bytes."""
    return int(lib.ggz_frame_bound(raw_size, _params(layout, row_size, chunk_size, 1)))


def encode(data, layout="bytes", row_size: int = 0, chunk_size: int = 0, threads: int = 1,
           trellis: bool = False) -> bytes:
    """Code `data` into one frame.  layout: "bytes", "q8_0" (34-byte blocks),
    "plane16" (F16/BF16), "plane32" (F32); row_size: bytes per row, chunks hold
    whole rows (0: any boundary); chunk_size: target raw bytes per chunk
    (0: 256 KiB); threads: 0 = all cores.  trellis (q8_0 only): code the
    symbols by trellis state (FrameInfo.trellis; format version 2, or 3 where
    the scales are coded by row steps) for the levels of tcq_quantize, which
    then cost about a bit less each."""
    src = _buf(data)
    n = len(src)
    if trellis and _layout_id(layout) != C.LAYOUT_IDS["q8_0"]:
        raise ValueError("trellis coding is for the q8_0 layout only")
    params = _params(layout, row_size, chunk_size, _threads(threads), trellis)
    cap = lib.ggz_frame_bound(n, params)
    if cap == 0:
        unit = C.LAYOUT_UNIT[params.layout]
        raise CodecError(f"cannot encode {n} bytes as {C.LAYOUT_NAMES[params.layout]} with row size "
                         f"{row_size}: the size must be a multiple of the row size, itself a multiple of {unit}",
                         "PARAM")
    # np.empty, not bytearray: pages of the worst-case bound that the frame does
    # not reach are never touched (a zeroed bound would double the peak memory)
    out = np.empty(cap, np.uint8)
    r = _check(lib.ggz_encode_tensor(ffi.from_buffer(out), cap, src, n, params), "encode")
    return out[:r].tobytes()


@dataclass(frozen=True)
class FrameInfo:
    layout: str
    raw_size: int
    frame_size: int
    row_size: int
    rows_per_chunk: int
    n_chunks: int
    n_streams: int
    chunk_raw_size: int
    version: int = 1          # 2: trellis-coded Q8_0 symbols; 3: Q8_0 scales by row steps
    flags: int = 0            # FLAG_TRELLIS, FLAG_SCALE_DELTA

    @property
    def trellis(self) -> bool:
        return bool(self.flags & C.FLAG_TRELLIS)


def info(frame) -> FrameInfo:
    """Header of a frame (checked, including the header CRC)."""
    src = _buf(frame)
    i = ffi.new("ggz_frame_info *")
    _check(lib.ggz_frame_info_get(src, len(src), i), "frame header")
    return FrameInfo(C.LAYOUT_NAMES[i.layout], i.raw_size, i.frame_size, i.row_size,
                     i.rows_per_chunk, i.n_chunks, i.n_streams, i.chunk_raw_size, i.version, i.flags)


def decode(frame, out: Optional[np.ndarray] = None, threads: int = 0) -> np.ndarray:
    """Decode a frame.  Returns `out` (any writable C-contiguous array of at
    least raw_size bytes, viewed as uint8) or a new uint8 array; threads 0 = all
    cores.  Raises CodecError naming the failing chunk."""
    src = _buf(frame)
    fi = info(frame)
    if out is None:
        out = np.empty(fi.raw_size, dtype=np.uint8)  # not zeroed: every byte is written
    elif not (out.flags.c_contiguous and out.flags.writeable) or out.nbytes < fi.raw_size:
        raise ValueError(f"out must be a writable contiguous array of at least {fi.raw_size} bytes")
    bad = ffi.new("int64_t *")
    dst = ffi.from_buffer(out, require_writable=True)
    r = lib.ggz_decode_tensor(dst, out.nbytes, src, len(src), _threads(threads), bad)
    _check(r, "decode", bad[0])
    return out.reshape(-1).view(np.uint8)[: fi.raw_size] if out.ndim == 1 or out.dtype == np.uint8 else out


def decode_chunk(frame, index: int) -> np.ndarray:
    """Decode chunk `index` alone (its raw bytes)."""
    src = _buf(frame)
    fi = info(frame)
    if not 0 <= index < fi.n_chunks:
        raise IndexError(f"chunk {index} out of range (frame has {fi.n_chunks})")
    out = np.empty(fi.chunk_raw_size, dtype=np.uint8)
    r = _check(lib.ggz_decode_chunk(ffi.from_buffer(out, require_writable=True), out.nbytes, src, len(src), index),
               "decode chunk", index)
    return out[:r]


class Reader:
    """A frame opened once for random access (ggz_reader, what the patched llama.cpp
    uses for tensors kept coded in RAM): check() takes every chunk's CRC without
    decoding, chunk(j) decodes one chunk."""

    def __init__(self, frame):
        self._src = _buf(frame)   # the reader points into these bytes: keep them alive
        p = ffi.new("ggz_reader **")
        _check(lib.ggz_reader_open(p, self._src, len(self._src)), "frame header")
        self._r = ffi.gc(p[0], lib.ggz_reader_free)
        self.info = info(frame)
        self._scratch = ffi.new("uint8_t[]", lib.ggz_reader_scratch_size(self._r))

    def check(self) -> int:
        bad = ffi.new("int64_t *")
        return _check(lib.ggz_reader_check(self._r, bad), "check", bad[0])

    def chunk(self, index: int) -> np.ndarray:
        if not 0 <= index < self.info.n_chunks:
            raise IndexError(f"chunk {index} out of range (frame has {self.info.n_chunks})")
        out = np.empty(self.info.chunk_raw_size, dtype=np.uint8)
        r = _check(lib.ggz_reader_decode_chunk(self._r, index, ffi.from_buffer(out, require_writable=True),
                                               out.nbytes, self._scratch), "decode chunk", index)
        return out[:r]

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunks index and index + 1, decoded side by side (ggz_reader_decode_pair)."""
        if not 0 <= index < self.info.n_chunks - 1:
            raise IndexError(f"chunk pair {index} out of range (frame has {self.info.n_chunks} chunks)")
        outs = [np.empty(self.info.chunk_raw_size, dtype=np.uint8) for _ in range(2)]
        scratch = [self._scratch, ffi.new("uint8_t[]", len(self._scratch))]
        bad = ffi.new("int64_t *")
        r = _check(lib.ggz_reader_decode_pair(self._r, index, [ffi.from_buffer(o, require_writable=True) for o in outs],
                                              outs[0].nbytes, scratch, bad), "decode chunk pair", bad[0])
        first = min(self.info.chunk_raw_size, r)
        return outs[0][:first], outs[1][:r - first]


def verify(frame) -> int:
    """Check every CRC and decode every chunk into scratch; returns raw_size."""
    src = _buf(frame)
    bad = ffi.new("int64_t *")
    r = lib.ggz_verify_tensor(src, len(src), bad)
    return _check(r, "verify", bad[0])


def entropy_bound(data, layout="bytes", row_size: int = 0) -> float:
    """Order-0 entropy bound in bytes of data under layout with rows of
    row_size bytes, as encode() takes them (FORMAT.md): no frame is smaller.
    For q8_0 the row size matters: scales may be coded as row differences."""
    src = _buf(data)
    r = lib.ggz_entropy_bound(src, len(src), _layout_id(layout), row_size)
    if r < 0:
        raise ValueError(f"{len(src)} bytes do not fit layout {layout!r} with row size {row_size}")
    return float(r)


def crc32c(data, crc: int = 0) -> int:
    return int(lib.ggz_crc32c(crc, _buf(data), len(_buf(data))))


def kernels() -> list[str]:
    """Kernels compiled in that this host can run, widest vectors last (kernel() names the one chosen)."""
    out = []
    avail = ffi.new("int *")
    for i in range(lib.ggz_kernel_count()):
        name = lib.ggz_kernel_info(i, avail, ffi.NULL)
        if avail[0]:
            out.append(ffi.string(name).decode())
    return out


def compiled_kernels() -> list[str]:
    """All kernels compiled in, runnable here or not."""
    return [ffi.string(lib.ggz_kernel_info(i, ffi.NULL, ffi.NULL)).decode()
            for i in range(lib.ggz_kernel_count())]


def kernel() -> str:
    """The decode kernel in use (GGZIP_KERNEL forces one)."""
    return ffi.string(lib.ggz_kernel_name()).decode()


def encoder_kernel() -> str:
    return ffi.string(lib.ggz_encoder_kernel_name()).decode()


def set_kernel(name: str) -> None:
    """Use kernel `name` from now on (for tests and benchmarks)."""
    if lib.ggz_is_error(lib.ggz_set_kernel(name.encode())):
        raise CodecError(f"kernel {name!r} is not available here (available: {', '.join(kernels())})", "KERNEL")


def forced_kernel_error() -> Optional[str]:
    e = lib.ggz_kernel_forced_error()
    return None if e == ffi.NULL else ffi.string(e).decode()


def rows_per_chunk(raw_size: int, row_size: int, chunk_size: int = 0) -> int:
    """The rows per chunk encode() gives a tensor of raw_size bytes in rows of
    row_size bytes (what a trellis quantizer must restart its lanes on)."""
    return _check(lib.ggz_rows_per_chunk(raw_size, _params("bytes", row_size, chunk_size, 1, False)),
                  "rows per chunk")


def tcq_quantize(w: np.ndarray, steps: np.ndarray, rows_per_chunk: int, mu: float = 0.0,
                 bits: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Trellis-coded quantization of the float32 rows w (rows, cols) on steps
    (rows, cols/32), one per Q8_0 block: the int8 levels along the path that
    minimises sum (w/d - L)^2 + mu * bits[class, L] (bits: (2, 256) float32,
    indexed by the level's byte), and the (2, 256) counts of the levels by
    trellis class.  Lanes restart every rows_per_chunk rows (the frame's)."""
    w = np.ascontiguousarray(w, np.float32)
    steps = np.ascontiguousarray(steps, np.float32)
    rows, cols = w.shape
    if steps.shape != (rows, cols // 32):
        raise ValueError(f"steps of shape {steps.shape} for weights of shape {w.shape}")
    q = np.empty((rows, cols), np.int8)
    counts = np.zeros((2, 256), np.uint64)
    b = ffi.NULL
    if bits is not None:
        bits = np.ascontiguousarray(bits, np.float32)
        b = ffi.from_buffer("float[]", bits)
    _check(lib.ggz_tcq_quantize(ffi.from_buffer("float[]", w), rows, cols, ffi.from_buffer("float[]", steps),
                                rows_per_chunk, mu, b, ffi.from_buffer("int8_t[]", q, require_writable=True),
                                ffi.from_buffer("uint64_t[]", counts, require_writable=True)), "trellis quantize")
    return q, counts


def lane_order(cols: int) -> np.ndarray:
    """The columns of a Q8_0 row in lane order: index l * (cols/32) + b holds
    column 32 b + l (the order tcq_feedback decides them in)."""
    return np.arange(cols).reshape(cols // 32, 32).T.reshape(-1)


def tcq_feedback(w: np.ndarray, steps: np.ndarray, rows_per_chunk: int,
                 u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tcq_quantize's levels and counts with error feedback, decided lane after
    lane: u is feedback.feedback_factor of the weight's input covariance with
    its columns in lane_order (h[np.ix_(o, o)]), (cols, cols)."""
    w = np.ascontiguousarray(w, np.float32)
    steps = np.ascontiguousarray(steps, np.float32)
    u = np.ascontiguousarray(u, np.float32)
    rows, cols = w.shape
    if steps.shape != (rows, cols // 32):
        raise ValueError(f"steps of shape {steps.shape} for weights of shape {w.shape}")
    if u.shape != (cols, cols):
        raise ValueError(f"feedback factor of shape {u.shape} for {cols} columns")
    q = np.empty((rows, cols), np.int8)
    counts = np.zeros((2, 256), np.uint64)
    _check(lib.ggz_tcq_feedback(ffi.from_buffer("float[]", w), rows, cols, ffi.from_buffer("float[]", steps),
                                rows_per_chunk, ffi.from_buffer("float[]", u),
                                ffi.from_buffer("int8_t[]", q, require_writable=True),
                                ffi.from_buffer("uint64_t[]", counts, require_writable=True)), "trellis feedback")
    return q, counts
