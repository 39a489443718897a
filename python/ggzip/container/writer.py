"""GGZipWriter: a ggzip GGUF written tensor by tensor (docs/FORMAT.md section 3).

A GGUF's header (KV pairs, then every tensor's info and offset) comes before the
data, and a coded tensor's size is known only once it is coded.  So tensors go to
two spool files next to the output as they come — plain tensors to one, frames to
the other (frames must come after every plain tensor) — and close() writes the
header to the output's temporary file, appends the two spools and renames it.
Peak memory is one tensor and its frame, whatever the model's size.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import codec
from ..constants import CONTAINER_KEYS, FORMAT_VERSION, LAYOUT_IDS, LAYOUT_UNIT, Keys
from ..errors import GGZipError
from . import gguf_io as G
from .gguf_io import VT

# tensors below this size stay plain: a frame's header and tables would eat the gain
MIN_CODED_BYTES = 16 * 1024
# a tensor is coded only if its frame saves at least this fraction
MIN_GAIN = 0.01

# the frame layout of each ggml type with one (others: "bytes")
LAYOUT_OF_TYPE = {G.T.Q8_0: "q8_0", G.T.F16: "plane16", G.T.BF16: "plane16", G.T.F32: "plane32"}


def layout_for(ggml_type: int, ne) -> tuple[str, int]:
    """Frame layout and row size (bytes) of a tensor: Q8_0 blocks split into
    symbols and scales, 16/32-bit floats by byte plane, anything else as bytes.
    A row is ne0 elements, so chunks hold whole rows; 1-D tensors use the
    layout's unit and may be cut anywhere."""
    layout = LAYOUT_OF_TYPE.get(ggml_type, "bytes")
    if len(ne) <= 1:
        row = LAYOUT_UNIT[LAYOUT_IDS[layout]]
    else:
        row = G.tensor_nbytes(ggml_type, ne[:1])
    return layout, row


@dataclass
class WrittenTensor:
    name: str
    ggml_type: int
    ne: tuple
    nbytes: int          # raw bytes
    stored: int          # bytes in the file (frame or raw)
    coded: bool
    layout: str = ""


class GGZipWriter:
    """Write a ggzip GGUF to `path`, atomically.

        with GGZipWriter(out, threads=2) as w:
            w.add_kv("general.architecture", "llama", VT.STRING)
            w.add_tensor("blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q8_0, (576, 576), data)
        # out exists only now; an exception inside the block deletes every temporary

    add_tensor's `ne` is ggml's order (ne0 = the contiguous dimension) and `data`
    any buffer of exactly ggml_nbytes bytes (bytes, memoryview, mmap slice, numpy
    array).  code=False keeps a tensor plain; otherwise it is coded where that
    pays (MIN_CODED_BYTES, MIN_GAIN).  check=True decodes every frame once and
    compares it with the input before writing it.  plain=True writes an ordinary
    GGUF instead (nothing coded, no ggzip container keys)."""

    def __init__(self, path, *, alignment: int = G.DEFAULT_ALIGNMENT, threads: Optional[int] = None,
                 check: bool = True, plain: bool = False, chunk_size: int = 0):
        self.path = Path(path)
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGZipError(f"{path}: alignment {alignment} is not a power of two")
        self.alignment = alignment
        self.threads = threads or 0
        # raw bytes per chunk (0: the codec's default); the frame records its rows per chunk
        self.chunk_size = chunk_size or 0
        self.check = check
        self.plain = plain
        self.kvs: list[tuple[str, bytes]] = []
        self._keys: set[str] = set()
        self.tensors: list[WrittenTensor] = []
        self._names: set[str] = set()
        self._plain: list[tuple[WrittenTensor, int]] = []   # (tensor, offset in plain spool)
        self._coded: list[tuple[WrittenTensor, int]] = []   # (tensor, offset in frame spool)
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._spools = [tempfile.TemporaryFile(dir=self.path.parent, prefix=self.path.name + ".")
                            for _ in range(2)]
        except OSError as e:
            raise GGZipError(f"{path}: cannot write here: {e.strerror}") from None

    # ---- metadata ------------------------------------------------------------
    def add_kv(self, key: str, value, vtype: int, sub_type: Optional[int] = None) -> None:
        """A metadata pair of GGUF value type vtype (gguf.GGUFValueType or VT)."""
        if key == "general.alignment":
            self.alignment = int(value)
        self.add_raw_kv(key, G.kv_bytes(key, value, int(vtype), None if sub_type is None else int(sub_type)))

    def add_raw_kv(self, key: str, raw: bytes) -> None:
        """A metadata pair already serialised (key, type, value), copied verbatim."""
        if key in self._keys:
            raise GGZipError(f"{self.path}: metadata key {key!r} given twice")
        if key in CONTAINER_KEYS:
            raise GGZipError(f"{self.path}: {key!r} is written by the container itself")
        self._keys.add(key)
        self.kvs.append((key, raw))

    def add_string(self, key: str, value: str) -> None:
        self.add_kv(key, value, VT.STRING)

    def add_uint32(self, key: str, value: int) -> None:
        self.add_kv(key, value, VT.UINT32)

    def add_float32(self, key: str, value: float) -> None:
        self.add_kv(key, value, VT.FLOAT32)

    # ---- tensors -------------------------------------------------------------
    def add_tensor(self, name: str, ggml_type: int, ne, data, *, code: bool = True,
                   trellis: bool = False) -> WrittenTensor:
        ggml_type = int(ggml_type)
        ne = tuple(int(x) for x in ne)
        try:
            nbytes = G.tensor_nbytes(ggml_type, ne)
        except GGZipError as e:
            raise GGZipError(f"{self.path}: tensor {name!r}: {e}") from None
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data)
        view = memoryview(data).cast("B")
        if view.nbytes != nbytes:
            raise GGZipError(f"{self.path}: tensor {name!r} ({G.type_name(ggml_type)} {list(ne)}) "
                             f"needs {nbytes} bytes, got {view.nbytes}")
        if name in self._names:
            raise GGZipError(f"{self.path}: tensor {name!r} given twice")
        t = WrittenTensor(name, ggml_type, ne, nbytes, nbytes, False)
        frame = None
        if code and not self.plain and nbytes >= MIN_CODED_BYTES:
            layout, row = layout_for(ggml_type, ne)
            frame = codec.encode(view, layout=layout, row_size=row, chunk_size=self.chunk_size,
                                 threads=self.threads, trellis=trellis and layout == "q8_0")
            if len(frame) > nbytes * (1 - MIN_GAIN):
                frame = None
            else:
                t.layout = layout
                if self.check:
                    self._check_frame(name, frame, view)
        spool = self._spools[1 if frame is not None else 0]
        off = spool.tell()
        try:
            spool.write(frame if frame is not None else view)
            spool.write(b"\0" * (G.align(off + (len(frame) if frame is not None else nbytes),
                                         self.alignment) - spool.tell()))
        except OSError as e:
            raise GGZipError(f"{self.path}: writing failed: {e}") from e
        if frame is not None:
            t.coded, t.stored = True, len(frame)
            self._coded.append((t, off))
        else:
            self._plain.append((t, off))
        self.tensors.append(t)
        self._names.add(name)
        return t

    def _check_frame(self, name: str, frame: bytes, view: memoryview) -> None:
        """Decode chunk by chunk (memory: one chunk) and compare with the input."""
        fi = codec.info(frame)
        src = np.frombuffer(view, np.uint8)
        ok = fi.raw_size == src.size
        for j in range(fi.n_chunks if ok else 0):
            part = codec.decode_chunk(frame, j)
            a = j * fi.chunk_raw_size
            if not np.array_equal(part, src[a:a + part.size]):
                ok = False
                break
        if not ok:
            raise GGZipError(f"{self.path}: tensor {name!r}: the frame does not decode to the "
                             "input (codec bug): not written")

    # ---- finish ----------------------------------------------------------------
    def close(self, extra_kvs: Optional[list[tuple[str, bytes]]] = None) -> None:
        """Write the header and the data, rename to the output path.  extra_kvs:
        serialised container pairs (compress_file's ggzip.original.*)."""
        if self._closed:
            return
        self._closed = True
        if self.alignment != G.DEFAULT_ALIGNMENT and "general.alignment" not in self._keys:
            # every reader assumes the default unless the header says otherwise
            self.add_kv("general.alignment", self.alignment, VT.UINT32)
        coded = [t for t, _ in self._coded]
        shapes = []
        for t in coded:
            shapes.extend(list(t.ne) + [1] * (4 - len(t.ne)))
        extra = list(extra_kvs or [])
        given = {k for k, _ in extra}
        if not self.plain and not given & {Keys.ORIGINAL_TENSOR_INFO, Keys.ORIGINAL_HEADER}:
            # no original file: decompress gives the plain GGUF of this writer (plain=True),
            # tensors in the order they were added
            blob, off = [], 0
            for t in self.tensors:
                blob.append(G.tensor_info_bytes(t.name, t.ne, t.ggml_type, off))
                off = G.align(off + t.nbytes, self.alignment)
            blob = b"".join(blob)
            head = G.align(24 + sum(len(raw) for _, raw in self.kvs) + len(blob), self.alignment)
            extra += [(Keys.ORIGINAL_SIZE, G.kv_bytes(Keys.ORIGINAL_SIZE, head + off, VT.UINT64)),
                      (Keys.ORIGINAL_TENSOR_INFO, G.kv_bytes(Keys.ORIGINAL_TENSOR_INFO, np.frombuffer(
                          blob, np.uint8), VT.ARRAY, VT.UINT8))]
        kvs = list(self.kvs) + ([] if self.plain else [
            (Keys.FORMAT_VERSION, G.kv_bytes(Keys.FORMAT_VERSION, FORMAT_VERSION, VT.UINT32)),
            (Keys.TENSOR_NAMES, G.kv_bytes(Keys.TENSOR_NAMES, [t.name for t in coded], VT.ARRAY, VT.STRING)),
            (Keys.TENSOR_TYPES, G.kv_bytes(Keys.TENSOR_TYPES, [t.ggml_type for t in coded], VT.ARRAY, VT.UINT32)),
            (Keys.TENSOR_SHAPES, G.kv_bytes(Keys.TENSOR_SHAPES, shapes, VT.ARRAY, VT.UINT64)),
        ]) + extra
        plain_size = self._spools[0].tell()     # a multiple of the alignment
        infos = [G.tensor_info_bytes(t.name, t.ne, t.ggml_type, off) for t, off in self._plain]
        infos += [G.tensor_info_bytes(t.name, (t.stored,), G.T.I8, plain_size + off) for t, off in self._coded]
        head = G.preamble(len(infos), len(kvs)) + b"".join(raw for _, raw in kvs) + b"".join(infos)
        head += b"\0" * (G.align(len(head), self.alignment) - len(head))
        tmp = None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                for spool in self._spools:
                    spool.flush()
                    spool.seek(0)
                    shutil.copyfileobj(spool, out, 1 << 22)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)     # mkstemp makes 0600; give the usual mode
            os.replace(tmp, self.path)
            tmp = None
        except OSError as e:
            raise GGZipError(f"{self.path}: writing failed: {e}") from e
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self._close_spools()

    def abort(self) -> None:
        """Drop everything; the output path is left as it was."""
        self._closed = True
        self._close_spools()

    def _close_spools(self) -> None:
        for s in self._spools:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # ---- totals ------------------------------------------------------------------
    @property
    def raw_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored for t in self.tensors)
