"""compress_file, decompress_file, verify_file: whole GGUF files.

compress keeps everything decompress needs to give back the original file byte for
byte: the original's KV pairs are copied verbatim (in order) into the ggzip GGUF, its
tensor-info section (tensor order, dims, types, offsets) is kept as a byte array, and
its size and sha256.  The original header is then rebuilt as GGUF v3 preamble + KV
pairs + tensor infos + zero padding; where that would differ from the original's
bytes (GGUF v2, odd padding), the original header is stored whole, and non-zero
padding between tensors is stored too.  decompress checks the sha256.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..constants import Keys
from ..errors import GGZipError
from . import gguf_io as G
from .gguf_io import VT
from .reader import GGZipReader
from .writer import GGZipWriter, WrittenTensor


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False,
                disable=None if progress else True)


@dataclass
class CompressReport:
    src: Path
    dst: Path
    in_size: int
    out_size: int
    seconds: float
    tensors: list[WrittenTensor] = field(default_factory=list)
    header_stored: bool = False

    @property
    def ratio(self) -> float:
        return self.in_size / max(self.out_size, 1)

    def summary(self) -> str:
        n = sum(t.coded for t in self.tensors)
        return (f"{self.src} -> {self.dst}: {self.in_size / 1e6:.1f} MB -> {self.out_size / 1e6:.1f} MB "
                f"({100 * self.out_size / max(self.in_size, 1):.1f}%, ratio {self.ratio:.3f}), "
                f"{n}/{len(self.tensors)} tensors coded, {self.in_size / 1e6 / max(self.seconds, 1e-9):.0f} MB/s")


def _sha256(r: GGZipReader, progress: bool, desc: str = "sha256") -> str:
    h = hashlib.sha256()
    mm, step = r._mm, 1 << 24
    with _bar(len(mm), desc, progress) as bar:
        for i in range(0, len(mm), step):
            h.update(mm[i:i + step])
            r.release_range(i, i + step)
            bar.update(min(step, len(mm) - i))
    return h.hexdigest()


def _rebuild_header(n_tensors: int, kv_raw: list[bytes], tensor_info: bytes, alignment: int) -> bytes:
    head = G.preamble(n_tensors, len(kv_raw)) + b"".join(kv_raw) + tensor_info
    return head + b"\0" * (G.align(len(head), alignment) - len(head))


def _layout_gaps(infos, data_start: int, size: int, what: str):
    """(start, end) of every byte range after data_start that holds no tensor data,
    in file order, and the tensors sorted by offset."""
    order = sorted(infos, key=lambda t: t.offset)
    gaps, pos = [], data_start
    for t in order:
        start = data_start + t.offset
        if start < pos:
            raise GGZipError(f"{what}: tensor {t.name!r} overlaps the one before it")
        gaps.append((pos, start))
        pos = start + t.nbytes
    if pos > size:
        raise GGZipError(f"{what}: truncated: the tensors end at byte {pos}, the file has {size}")
    gaps.append((pos, size))
    return gaps, order


def compress_file(src, dst, threads: Optional[int] = None, progress: bool = True,
                  chunk_size: int = 0) -> CompressReport:
    """Write a ggzip GGUF of the GGUF src to dst (atomically), losslessly; chunk_size:
    raw bytes per chunk (0: the codec's default)."""
    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise GGZipError(f"{dst}: is the input; give another output path")
    with GGZipReader(src) as r:
        if r.is_ggzip:
            raise GGZipError(f"{src}: already ggzip-compressed (ggzip decompress gives the original)")
        h, mm, what = r.header, r._mm, str(src)
        kv_raw = [(k, h.raw(kv.start, kv.end)) for k, kv in h.kvs.items()]
        tensor_info = h.raw(h.info_start, h.info_end)
        extra = [(Keys.ORIGINAL_SIZE, G.kv_bytes(Keys.ORIGINAL_SIZE, r.size, VT.UINT64))]
        original_head = bytes(mm[:min(h.data_start, r.size)])
        rebuilt = _rebuild_header(len(h.tensors), [b for _, b in kv_raw], tensor_info, h.alignment)
        header_stored = rebuilt != original_head
        if header_stored:
            extra.append((Keys.ORIGINAL_HEADER, G.kv_bytes(Keys.ORIGINAL_HEADER, np.frombuffer(
                original_head, np.uint8), VT.ARRAY, VT.UINT8)))
        else:
            extra.append((Keys.ORIGINAL_TENSOR_INFO, G.kv_bytes(Keys.ORIGINAL_TENSOR_INFO, np.frombuffer(
                tensor_info, np.uint8), VT.ARRAY, VT.UINT8)))
        gaps, _ = _layout_gaps(h.tensors, h.data_start, r.size, what)
        padding = b"".join(mm[a:b] for a, b in gaps)
        if padding.count(0) != len(padding):
            extra.append((Keys.ORIGINAL_PADDING, G.kv_bytes(Keys.ORIGINAL_PADDING, np.frombuffer(
                padding, np.uint8), VT.ARRAY, VT.UINT8)))
        extra.append((Keys.ORIGINAL_SHA256, G.kv_bytes(Keys.ORIGINAL_SHA256, _sha256(r, progress), VT.STRING)))

        w = GGZipWriter(dst, alignment=h.alignment, threads=threads, chunk_size=chunk_size)
        try:
            for k, raw in kv_raw:
                w.add_raw_kv(k, raw)
            with _bar(sum(t.nbytes for t in r.tensors.values()), "compress", progress) as bar:
                for name, t in r.tensors.items():
                    w.add_tensor(name, t.ggml_type, t.ne, r.stored(name))
                    r.release(name)
                    bar.update(t.nbytes)
            w.close(extra)
        except BaseException:
            w.abort()
            raise
    return CompressReport(src, dst, r.size, dst.stat().st_size, time.perf_counter() - t0,
                          w.tensors, header_stored)


# ---- restore: the original file's bytes, in order --------------------------------
def _restore(r: GGZipReader, write, progress: bool, desc: str,
             threads: int = 0) -> tuple[int, str, Optional[str]]:
    """Write the decompressed file through write(bytes-like); returns (size,
    sha256 of what was written, the original's sha256 or None)."""
    h, what = r.header, str(r.path)
    kv_raw = [h.raw(h.kvs[k].start, h.kvs[k].end) for k in r.model_keys]
    stored_head = h.value(Keys.ORIGINAL_HEADER)
    tinfo = h.value(Keys.ORIGINAL_TENSOR_INFO)
    size = h.value(Keys.ORIGINAL_SIZE)
    if stored_head is not None:
        head = stored_head.tobytes()
    elif tinfo is not None:
        head = _rebuild_header(len(r.tensors), kv_raw, tinfo.tobytes(), h.alignment)
    else:   # no original recorded (another writer): a plain GGUF, tensors in file order, packed
        infos, off = [], 0
        for t in r.tensors.values():
            infos.append(G.tensor_info_bytes(t.name, t.ne, t.ggml_type, off))
            off = G.align(off + t.nbytes, h.alignment)
        head = _rebuild_header(len(r.tensors), kv_raw, b"".join(infos), h.alignment)
        size = len(head) + off
    if size is None:
        raise GGZipError(f"{what}: {Keys.ORIGINAL_SIZE} is missing (damaged metadata)")
    oh = G.parse_header(head, f"{what} (original header)")
    if oh.data_start != len(head) or len(oh.tensors) != len(r.tensors):
        raise GGZipError(f"{what}: the stored original header is damaged")
    gaps, order = _layout_gaps(oh.tensors, oh.data_start, int(size), what)
    padding = h.value(Keys.ORIGINAL_PADDING)
    pad = memoryview(padding.tobytes()) if padding is not None else None
    if pad is not None and len(pad) != sum(b - a for a, b in gaps):
        raise GGZipError(f"{what}: the stored padding of the original is damaged")
    digest = hashlib.sha256()
    done = 0

    def put(b):
        nonlocal done
        write(b)
        digest.update(b)
        done += len(b)

    pad_pos = 0
    scratch = np.empty(max([t.nbytes for t in r.tensors.values() if t.coded] or [0]), np.uint8)
    put(head)
    with _bar(int(size), desc, progress) as bar:
        for (a, b), ti in zip(gaps, order + [None]):
            if pad is not None:
                put(pad[pad_pos:pad_pos + b - a])
                pad_pos += b - a
            else:
                n = b - a
                while n:
                    k = min(n, 1 << 20)
                    put(bytes(k))
                    n -= k
            if ti is None:
                break
            t = r.tensors.get(ti.name)
            if t is None or t.ggml_type != ti.ggml_type or t.nbytes != ti.nbytes:
                raise GGZipError(f"{what}: tensor {ti.name!r} does not match the original's "
                                 "tensor info (damaged metadata)")
            data = r.data(ti.name, out=scratch[:t.nbytes] if t.coded else None, threads=threads)
            put(memoryview(data).cast("B"))
            del data
            r.release(ti.name)
            bar.update(t.nbytes)
    return done, digest.hexdigest(), h.value(Keys.ORIGINAL_SHA256)


def decompress_file(src, dst, progress: bool = True, threads: int = 0) -> dict:
    """Write the original GGUF of the ggzip GGUF src to dst (atomically); for a
    file made by compress_file, byte-identical (its sha256 is checked)."""
    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    with GGZipReader(src) as r:
        if not r.is_ggzip:
            raise GGZipError(f"{src}: not a ggzip GGUF (no {Keys.FORMAT_VERSION}): nothing to decompress")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
        except OSError as e:
            raise GGZipError(f"{dst}: cannot write here: {e.strerror}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                size, got, want = _restore(r, f.write, progress, "decompress", threads)
            if want is not None and got != want:
                raise GGZipError(f"{src}: the decompressed file's sha256 {got} is not the "
                                 f"original's {want} (damaged metadata?)")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, dst)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise GGZipError(f"{dst}: writing failed: {e}") from e
            raise
        stored = r.size
    dt = time.perf_counter() - t0
    return {"src": str(src), "dst": str(dst), "in_size": stored, "out_size": size,
            "seconds": dt, "sha256": got, "identical": None if want is None else got == want}


def verify_file(path, progress: bool = True, threads: int = 0) -> dict:
    """Decode every frame (every chunk CRC checked) and, for files made by
    compress_file, check that the file it decompresses to has the original's
    sha256 (threads: decoder threads, 0 = all cores).  Returns a report; any failure raises GGZipError naming the file
    and, where it is one tensor's, the tensor."""
    path = Path(path)
    t0 = time.perf_counter()
    with GGZipReader(path) as r:
        if not r.is_ggzip:
            raise GGZipError(f"{path}: not a ggzip GGUF (no {Keys.FORMAT_VERSION})")
        from .. import codec
        for t in r.tensors.values():
            if t.coded:
                try:
                    fi = codec.info(r.stored(t.name))
                except codec.CodecError as e:
                    raise GGZipError(f"{path}: tensor {t.name!r}: frame is damaged ({e.name}): {e}") from e
                if fi.raw_size != t.nbytes or fi.frame_size != t.stored:
                    raise GGZipError(f"{path}: tensor {t.name!r}: frame holds {fi.raw_size} bytes in "
                                     f"{fi.frame_size}, the file says {t.nbytes} in {t.stored}")
        size, got, want = _restore(r, lambda b: None, progress, "verify", threads=threads)
        if want is not None and got != want:
            raise GGZipError(f"{path}: decompresses to sha256 {got}, not the original's {want}")
        tensors = list(r.tensors.values())
        report = {"file": str(path), "size": r.size, "tensors": len(tensors),
                  "coded": sum(t.coded for t in tensors),
                  "raw_bytes": sum(t.nbytes for t in tensors),
                  "stored_bytes": sum(t.stored for t in tensors),
                  "original_size": size, "sha256": got, "original_sha256": want,
                  "identical": None if want is None else got == want}
    report["seconds"] = time.perf_counter() - t0
    return report
