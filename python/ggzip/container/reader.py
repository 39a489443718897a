"""GGZipReader: a ggzip GGUF (or a plain one) memory-mapped, its tensors listed
with their original type and shape, any tensor decoded alone."""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import codec
from ..constants import CONTAINER_KEYS, FORMAT_VERSION, Keys
from ..errors import GGZipError
from . import gguf_io as G


@dataclass(frozen=True)
class Tensor:
    name: str
    ggml_type: int        # the original type (Q8_0, F16, ...)
    ne: tuple             # the original shape, ggml order (ne0 first)
    nbytes: int           # decoded size
    offset: int           # absolute file offset of the stored bytes
    stored: int           # stored bytes: the frame, or nbytes
    coded: bool

    @property
    def type_name(self) -> str:
        return G.type_name(self.ggml_type)

    @property
    def shape(self) -> tuple:
        """numpy order (ne[-1], ..., ne0)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64)) if self.ne else 1


def is_ggzip(path) -> bool:
    """True if path is a GGUF with ggzip container metadata."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            if head[:4] != G.GGUF_MAGIC:
                return False
            f.seek(0)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return Keys.FORMAT_VERSION in G.parse_header(m, str(path)).kvs
    except (OSError, ValueError, GGZipError):
        return False


class GGZipReader:
    """Open a GGUF read-only.  tensors: name -> Tensor (original type and shape), in
    the original file's order when it is recorded, else in file order;
    data(name): the tensor's bytes decoded (numpy uint8); array(name): as numpy of
    its type when it has one (F32, F16, BF16 as uint16, I8..I64, F64), else the
    bytes shaped (rows, bytes per row).  Plain GGUFs read too (is_ggzip False)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise GGZipError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise GGZipError(f"{self.path}: is a folder, not a GGUF file") from None
        except OSError as e:
            raise GGZipError(f"{self.path}: cannot read: {e.strerror}") from None
        try:
            size = self.path.stat().st_size
            if size < 24:
                raise GGZipError(f"{self.path}: not a GGUF file ({size} bytes)")
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.size = size
            self.header = G.parse_header(self._mm, str(self.path))
            self.is_ggzip = Keys.FORMAT_VERSION in self.header.kvs
            self.tensors = self._tensors()
        except BaseException:
            self.close()
            raise

    def _tensors(self) -> dict[str, Tensor]:
        h, what = self.header, str(self.path)
        coded: dict[str, tuple[int, tuple]] = {}
        if self.is_ggzip:
            v = h.value(Keys.FORMAT_VERSION)
            if v != FORMAT_VERSION:
                raise GGZipError(f"{what}: ggzip format version {v}; this ggzip reads {FORMAT_VERSION}")
            names = h.value(Keys.TENSOR_NAMES, [])
            types = h.value(Keys.TENSOR_TYPES, np.zeros(0, np.uint32))
            shapes = h.value(Keys.TENSOR_SHAPES, np.zeros(0, np.uint64))
            if not isinstance(names, list) or len(types) != len(names) or len(shapes) != 4 * len(names):
                raise GGZipError(f"{what}: ggzip metadata is damaged ({len(names)} names, "
                                 f"{len(types)} types, {len(shapes)} shape values)")
            for i, n in enumerate(names):
                ne = [int(x) for x in shapes[4 * i:4 * i + 4]]
                while len(ne) > 1 and ne[-1] == 1:
                    ne.pop()
                coded[n] = (int(types[i]), tuple(ne))
        out = {}
        for ti in h.tensors:
            start = h.data_start + ti.offset
            if ti.name in coded:
                if ti.ggml_type != G.T.I8 or len(ti.ne) != 1:
                    raise GGZipError(f"{what}: tensor {ti.name!r} is listed as compressed but is not "
                                     "a 1-D I8 frame")
                ty, ne = coded.pop(ti.name)
                try:
                    nbytes = G.tensor_nbytes(ty, ne)
                except GGZipError as e:
                    raise GGZipError(f"{what}: tensor {ti.name!r}: {e}") from None
                t = Tensor(ti.name, ty, ne, nbytes, start, int(ti.ne[0]), True)
            else:
                try:
                    nbytes = ti.nbytes
                except GGZipError as e:
                    raise GGZipError(f"{what}: tensor {ti.name!r}: {e}") from None
                t = Tensor(ti.name, ti.ggml_type, tuple(ti.ne), nbytes, start, nbytes, False)
            if t.offset + t.stored > self.size:
                raise GGZipError(f"{what}: truncated: tensor {ti.name!r} ends at byte "
                                 f"{t.offset + t.stored}, the file has {self.size}")
            out[ti.name] = t
        if coded:
            raise GGZipError(f"{what}: compressed tensor {next(iter(coded))!r} is not in the file")
        order = self.original_order()
        if order is not None and sorted(order) == sorted(out):
            out = {n: out[n] for n in order}
        return out

    def original_order(self) -> Optional[list[str]]:
        """Tensor names in the order of the original GGUF (None if not recorded)."""
        h = self.header
        info = h.value(Keys.ORIGINAL_TENSOR_INFO)
        try:
            if info is not None:
                return [t.name for t in G.parse_tensor_infos(info.tobytes(), f"{self.path} (original tensor info)")]
            head = h.value(Keys.ORIGINAL_HEADER)
            if head is not None:
                return [t.name for t in G.parse_header(head.tobytes(), f"{self.path} (original header)").tensors]
        except GGZipError:
            return None
        return None

    # ---- access ------------------------------------------------------------------
    def stored(self, name: str) -> memoryview:
        """The stored bytes of a tensor (its frame, or its data), zero-copy."""
        t = self._get(name)
        return memoryview(self._mm)[t.offset:t.offset + t.stored]

    def release(self, name: str) -> None:
        """Drop the mapped pages of a tensor's stored bytes from this process's
        resident memory (they stay in the page cache): a pass over every tensor
        then keeps about one tensor resident, not the file."""
        t = self._get(name)
        self.release_range(t.offset, t.offset + t.stored)

    def release_range(self, start: int, end: int) -> None:
        page = mmap.PAGESIZE
        a, b = (start + page - 1) // page * page, end // page * page
        if b > a and hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def data(self, name: str, out: Optional[np.ndarray] = None, threads: int = 0) -> np.ndarray:
        """The tensor's bytes (decoded if coded) as uint8.  Plain tensors: a
        read-only view of the mapping unless out is given."""
        t = self._get(name)
        src = self.stored(name)
        if not t.coded:
            if out is None:
                return np.frombuffer(src, np.uint8)
            out.reshape(-1).view(np.uint8)[:t.nbytes] = np.frombuffer(src, np.uint8)
            return out
        try:
            got = codec.decode(src, out=out, threads=threads)
        except codec.CodecError as e:
            raise GGZipError(f"{self.path}: tensor {name!r}: frame is damaged ({e.name}): {e}") from e
        if got.size != t.nbytes:
            raise GGZipError(f"{self.path}: tensor {name!r}: frame decodes to {got.size} bytes, "
                             f"its {t.type_name} shape {list(t.ne)} needs {t.nbytes}")
        return got

    def array(self, name: str) -> np.ndarray:
        t = self._get(name)
        raw = self.data(name)
        dt = G.NUMPY_DTYPES.get(t.ggml_type)
        if dt is not None:
            return raw.view(dt).reshape(t.shape)
        return raw.reshape(-1, G.tensor_nbytes(t.ggml_type, t.ne[:1]))

    def value(self, key: str, default=None):
        """A metadata value (numbers, str, numpy arrays for numeric arrays)."""
        return self.header.value(key, default)

    @property
    def model_keys(self) -> list[str]:
        """Metadata keys of the model (container keys left out), in file order."""
        return [k for k in self.header.kvs if k not in CONTAINER_KEYS]

    def _get(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGZipError(f"{self.path}: no tensor {name!r}") from None

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            self.header = None
            try:
                mm.close()
            except BufferError:   # a view handed out is still alive; the GC closes it
                pass
            self._mm = None
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
