"""ggzip.container: the ggzip GGUF (docs/FORMAT.md section 3).

    compress_file(src, dst)     # lossless: every tensor coded where it pays
    decompress_file(src, dst)   # the original GGUF, byte for byte (sha256 checked)
    verify_file(path)           # every frame decoded, every CRC checked
    analyze_file(path)          # per tensor: entropy, ggzip vs zstd vs lz4
    GGZipWriter, GGZipReader, is_ggzip
"""
from .files import CompressReport, compress_file, decompress_file, verify_file
from .reader import GGZipReader, Tensor, is_ggzip
from .writer import GGZipWriter, layout_for

__all__ = ["compress_file", "decompress_file", "verify_file", "analyze_file", "GGZipWriter",
           "GGZipReader", "Tensor", "is_ggzip", "layout_for", "CompressReport"]


def analyze_file(path, **kw):
    """See ggzip.container.analyze.analyze_file."""
    from .analyze import analyze_file as _analyze
    return _analyze(path, **kw)
