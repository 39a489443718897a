"""Minimal memory-mapped reader of .safetensors files (8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets}}, raw data).
Only what convert and the benchmarks need: no torch, no copies."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import GGZipError

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}


class SafeTensors:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._mm = np.memmap(self.path, np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise GGZipError(f"{self.path}: cannot map safetensors file: {e}") from None
        if self._mm.size < 8:
            raise GGZipError(f"{self.path}: truncated safetensors file")
        (hlen,) = struct.unpack("<Q", self._mm[:8].tobytes())
        if 8 + hlen > self._mm.size:
            raise GGZipError(f"{self.path}: truncated safetensors header")
        try:
            header = json.loads(self._mm[8:8 + hlen].tobytes())
        except ValueError:
            raise GGZipError(f"{self.path}: safetensors header is not JSON") from None
        header.pop("__metadata__", None)
        self._base = 8 + hlen
        self.entries = header

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only view (BF16 widened to float32)."""
        e = self.entries[name]
        a, b = e["data_offsets"]
        if self._base + b > self._mm.size:
            raise GGZipError(f"{self.path}: tensor {name!r} runs past the end of the file")
        raw = self._mm[self._base + a:self._base + b]
        if e["dtype"] == "BF16":
            u = raw.view(np.uint16).astype(np.uint32) << 16
            return u.view(np.float32).reshape(e["shape"])
        dt = _DTYPES.get(e["dtype"])
        if dt is None:
            raise GGZipError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
        return raw.view(dt).reshape(e["shape"])
