"""`ggzip convert`: a float (or dequantized) GGUF -> ggzip GGUF of Q8_0 tensors
whose symbols are chosen for the entropy coder, rANS-coded (or, with --plain, an
ordinary Q8_0 GGUF).

Streaming: the input is memory-mapped and processed tensor by tensor, a tensor by
row chunks, so the peak memory is the Q8_0 output of the largest tensor plus one
chunk (tests/test_convert.py::test_streaming_memory), plus its frame while
ggzip.container.GGZipWriter codes it.  The rescaling plan needs only the imatrix
and the 1-D norm weights, so it is built before the first tensor.  The writer
spools each tensor to disk as it comes and writes the output to a temporary file
renamed only when complete.

Activation sparsity (--sparsity / --attn-sparsity, quantize/sparsity.py): the
thresholds come from ggzip's numpy forward pass of the dense source model over
the calibration text, are mapped through the rescaling, and are written as F32
tensors; the weights the sparse kernels read by input channel (ffn_down, and
attn_q / attn_output with attention sparsity) are stored transposed
(constants.SPARSE_TRANSPOSED_*).
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import (SPARSE_THR_SUFFIX, SPARSE_TRANSPOSED_ATTN, SPARSE_TRANSPOSED_FFN,
                         Keys)
from ..errors import GGZipError
from ..quantize import (BLOCK_BYTES, QK, QuantStats, pack_q8_0, plan_rescale, prune_rows,
                        quantize_rows, reference_step, row_steps, sample_rows,
                        step_for_rate)
from ..quantize.q8 import block_absmax
from ..quantize.q8 import RateDistortion
from ..quantize.q8 import DEFAULT_THETA, scale_stream_bits, symbol_entropy
from ..quantize.q8 import dequantize_rows, quantize_trellis, trellis_bits
from ..quantize.feedback import Factors, code_lengths, damping, quantize_feedback
from ..quantize.stats import load_imatrix

# metadata written by convert: constants.Keys.CONVERT_* (names kept for old imports)
KEY_ALPHA = Keys.CONVERT_ALPHA
KEY_PRUNE = Keys.CONVERT_PRUNE
KEY_RATE = Keys.CONVERT_RATE
KEY_STATS = Keys.CONVERT_STATS
KEY_SOURCE = Keys.CONVERT_SOURCE

# Default rescaling exponents, measured on SmolLM2 (KL of next-token distributions
# of a numpy forward pass on held-out text, 4-6 bpw): with an imatrix, alpha
# 0.2-0.3 halves the KL of alpha 0 (0.5, the high-rate optimum, loses: a large s
# inflates a row's absmax, the no-clip floor binds and rate is lost); the
# weight-only proxy measured no gain (within +-10%), so it is off unless asked.
ALPHA_IMATRIX = 0.25
# Without an imatrix or a calibration text, statistics of this many random tokens
# (calibrate.random_text), by llama-imatrix.  SmolLM2 at 3.97 bpw, KL divergence
# on Alice: 0.246 without statistics; 0.119, 0.126, 0.122 with 512, 1024, 6000
# random tokens; 0.119 with the imatrix of a real text (the Declaration of
# Independence).  Gemma-3-270M at 4.5 bpw: 0.106 -> 0.055 (real text: 0.051).
RANDOM_TOKENS = 1024
ALPHA_PROXY = 0.0

# The token embedding of an encoder is an input lookup only (no output head reads
# it): coding it at a share of the target rate buys the weight matrices a higher
# one in the same size.  On EmbeddingGemma-300M at 3.9 bits per weight, mean cosine
# to F32 on the calibration text's sentences (scripts/bench_rd.py, held out from
# its evaluation): share 0.51 -> 0.9815, 0.64 -> 0.9886, 0.77 -> 0.9924,
# 0.9 -> 0.9904, 1 (uniform) -> 0.9794.  That is the one model of its kind measured,
# so the share is a default for its architecture only; --embd-share sets it.
EMBD_SHARE_DEFAULT = {"gemma-embedding": 0.77}
EMBD_NAME = "token_embd.weight"
RATE_CAP = 7.0   # bits per weight where the quantizer's rate saturates (about Q8_0)
DEFAULT_STEP = 1.0   # --step without --target-bpw/--step: about Q8_0's quality


def split_rates(shapes: dict, target_bpw: float, share: float) -> tuple[float, dict[str, float]]:
    """(rate of the other tensors, {token embedding: rate}) that code the token
    embedding at share x target_bpw and keep the mean over all tensors' values at
    target_bpw; where the others would pass RATE_CAP they stay there and the
    embedding takes the rest of the budget."""
    n = {name: int(np.prod(shp)) for name, shp in shapes.items()}
    frac = n.get(EMBD_NAME, 0) / max(1, sum(n.values()))
    if frac == 0 or frac == 1 or share == 1:
        return target_bpw, {}
    te = share * target_bpw
    rest = (target_bpw - te * frac) / (1 - frac)
    if rest > RATE_CAP:
        rest = max(target_bpw, RATE_CAP)
        te = (target_bpw - rest * (1 - frac)) / frac
    return rest, {EMBD_NAME: te}

FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}
# 2-D tensors that are not matrix-multiplied or are looked up per row by code
# that may expect float: kept F32
_KEEP_FLOAT = ("norm", "token_types", "position_embd", "rope_freqs")


@dataclass
class TensorReport:
    name: str
    shape: tuple
    out_type: str
    stats: QuantStats | None = None
    step: float = 0.0
    trellis: bool = False      # trellis-coded levels (FrameInfo.trellis)


@dataclass
class ConvertReport:
    inp: Path
    out: Path
    arch: str
    stats_source: str
    dequantized_from: list[str]
    tensors: list[TensorReport] = field(default_factory=list)
    seconds: float = 0.0
    float_bytes: int = 0          # bytes of the input as float32
    alpha: float = 0.0
    q8_bytes: int = 0             # bytes of the tensors before the rANS code
    file_bytes: int = 0           # bytes of the output file
    plain: bool = False           # written as a plain GGUF (nothing coded)
    sparsity: float = 0.0         # P of the FFN activation-sparsity thresholds (0: none)
    attn_sparsity: float = 0.0    # P of the attn_q / attn_output thresholds (0: none)
    rows_source: str = ""         # where the row weights came from (--fisher), "" for none
    allocation: str = ""          # --allocate: bits each tensor group moved, "" for none

    def totals(self) -> dict:
        q = [t for t in self.tensors if t.stats is not None]
        n = sum(int(np.prod(t.shape)) for t in q)
        if not n:
            return {"weights": 0}
        bits = sum(t.stats.bpw * int(np.prod(t.shape)) for t in q)
        sig_err = [(10 ** (-t.stats.snr_db / 10), int(np.prod(t.shape))) for t in q]
        return {
            "weights": n,
            "bpw": bits / n,
            "zero_fraction": sum(t.stats.zero_fraction * int(np.prod(t.shape)) for t in q) / n,
            # mean over tensors of per-tensor SNR in dB (each tensor's own signal)
            "snr_db": float(np.average([t.stats.snr_db for t in q],
                                       weights=[w for _, w in sig_err])),
            "wsnr_db": float(np.average([t.stats.wsnr_db for t in q],
                                        weights=[w for _, w in sig_err])),
            "mb_per_s": self.float_bytes / 1e6 / max(self.seconds, 1e-9),
        }

    def summary(self) -> str:
        t = self.totals()
        src = ("float input" if not self.dequantized_from else
               "input dequantized from " + "/".join(sorted(set(self.dequantized_from))) +
               " (its weights lie on that grid: entropy is flattered)")
        if not t["weights"]:
            return (f"{self.out}: {self.arch}, {len(self.tensors)} tensors in F32, not "
                    f"quantized (stats: {self.stats_source}, alpha {self.alpha:g})\n  {src}")
        return (f"{self.out}: {self.arch}, {len(self.tensors)} tensors, "
                f"{t['weights'] / 1e6:.1f} M weights in Q8_0 blocks\n"
                f"  rate {t['bpw']:.3f} bits/weight (order-0 entropy of symbols + scales), "
                f"{t['zero_fraction'] * 100:.1f}% zeros\n"
                f"  SNR {t['snr_db']:.2f} dB, activation-weighted {t['wsnr_db']:.2f} dB "
                f"(stats: {self.stats_source}, alpha {self.alpha:g})\n" +
                (f"  row steps by output sensitivity: {self.rows_source}\n"
                 if self.rows_source else "") +
                (f"  rates by output sensitivity (bits from the mean): {self.allocation}\n"
                 if self.allocation else "") +
                f"  {src}\n" + self._sparsity_line() +
                f"  {self.float_bytes / 1e6:.0f} MB of float in {self.seconds:.1f} s = "
                f"{t['mb_per_s']:.0f} MB/s\n"
                f"  file {self.file_bytes / 1e6:.1f} MB" +
                (" (plain GGUF, not rANS-coded)" if self.plain else
                 f" ({8 * self.file_bytes / t['weights']:.3f} bits per quantized weight, all "
                 f"included); its tensors as plain Q8_0/F32: {self.q8_bytes / 1e6:.1f} MB"))


    def _sparsity_line(self) -> str:
        if not (self.sparsity or self.attn_sparsity):
            return ""
        return (f"  activation sparsity: FFN P={self.sparsity:g}, attention P={self.attn_sparsity:g} "
                "(thresholds from ggzip's numpy pass; "
                + ", ".join((["ffn_down"] if self.sparsity else []) +
                            (["attn_q", "attn_output"] if self.attn_sparsity else [])) +
                " stored transposed)\n")


class GGUFModel:
    """A GGUF model, memory-mapped (ggzip.container.GGZipReader), with float
    access to each tensor.  tensors: name -> container.Tensor; kv: the model's
    metadata, each value decoded when first read (a 262k-token vocabulary costs
    only if a tokenizer asks for it)."""

    def __init__(self, path: Path):
        from ..container import GGZipReader
        self.path = path = Path(path)
        if path.is_dir():
            raise GGZipError(f"{path}: is a folder; ggzip convert reads a GGUF file "
                             "(convert HF safetensors with llama.cpp's convert_hf_to_gguf.py)")
        # GGZipError naming the file, and the tensor where one is at fault
        self.reader = GGZipReader(path)
        self.tensors = self.reader.tensors
        self.kv = _Metadata(self.reader)
        arch = self.kv.get("general.architecture")
        if not isinstance(arch, str):
            raise GGZipError(f"{path}: no general.architecture in the GGUF metadata")
        self.arch = arch

    def type_name(self, name: str) -> str:
        return self.tensors[name].type_name

    def shape(self, name: str) -> tuple[int, ...]:
        """numpy shape (ne1, ne0) / (ne0,) of a tensor."""
        return self.tensors[name].shape

    def float32(self, name: str) -> np.ndarray:
        return self.rows32(name, None)

    def rows32(self, name: str, rows=None) -> np.ndarray:
        """The tensor (rows=None) or some rows of a 2-D tensor (a slice or an
        index array) as float32, dequantized if needed, read from the mmap."""
        import gguf
        from ..container.gguf_io import NUMPY_DTYPES, T, tensor_nbytes
        t = self.tensors[name]
        shp = t.shape
        data = self.reader.data(name)          # uint8: a view of the map (a plain tensor)
        data = data.reshape(-1, tensor_nbytes(t.ggml_type, t.ne[:1]))   # one row per ne0
        if rows is not None:
            if len(shp) != 2:
                raise GGZipError(f"{self.path}: tensor {name!r} of shape {shp} is not 2-D: "
                                 "it cannot be read by rows")
            data = data[rows]
            shp = (data.shape[0], shp[1])
        try:
            if t.ggml_type in (T.F32, T.F16, T.F64):
                a = data.view(NUMPY_DTYPES[t.ggml_type]).astype(np.float32, copy=False)
            else:
                a = gguf.quants.dequantize(data, T(t.ggml_type))
        except NotImplementedError:
            raise GGZipError(f"{self.path}: tensor {name!r} has type {t.type_name}, which "
                             "ggzip convert cannot dequantize") from None
        except Exception as e:
            raise GGZipError(f"{self.path}: tensor {name!r} ({t.type_name}) cannot be read: "
                             f"{e}") from None
        if a.size != int(np.prod(shp)):
            raise GGZipError(f"{self.path}: tensor {name!r} holds {a.size} values, its "
                             f"shape {shp} needs {int(np.prod(shp))}")
        return a.reshape(shp)


class _Metadata(Mapping):
    """A GGUF's model metadata (container keys left out) by key, in file order;
    a value is decoded when first read."""

    def __init__(self, reader):
        self._reader = reader
        self._keys = {k: None for k in reader.model_keys}
        self._values: dict = {}

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._values:
            self._values[key] = self._reader.value(key)
        return self._values[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _find_llama_tool(name: str) -> Path | None:
    env = os.environ.get("GGZIP_LLAMA_BIN")
    here = Path(__file__).resolve().parents[3] / "build" / "llama" / "bin"
    for d in ([Path(env)] if env else []) + [here]:
        if (d / name).is_file():
            return d / name
    found = shutil.which(name)
    return Path(found) if found else None


def imatrix_from_text(model: Path, text: Path, out: Path, threads: int | None = None) -> Path:
    """Run llama-imatrix (the llama.cpp build of scripts/build_llama.sh) on a text."""
    exe = _find_llama_tool("llama-imatrix")
    if exe is None:
        raise GGZipError(f"{text}: --calib-text needs llama-imatrix (build it with "
                         "scripts/build_llama.sh, or set GGZIP_LLAMA_BIN), or pass --imatrix")
    ctx = 512
    while True:
        # add_eos off: llama-imatrix stops on models that append EOS (EmbeddingGemma);
        # statistics of the text's tokens do not need it
        cmd = [str(exe), "-m", str(model), "-f", str(text), "-o", str(out), "--no-ppl",
               "-t", str(threads or os.cpu_count() or 1), "-c", str(ctx), "--override-kv", "tokenizer.ggml.add_eos_token=bool:false"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        # llama-imatrix wants two contexts of tokens: a short text gets a shorter context
        short = re.search(r"tokenizes to only (\d+) tokens", r.stderr)
        if r.returncode == 0 or not short or ctx <= 32:
            break
        ctx = max(32, 1 << (int(short.group(1)) // 2).bit_length() - 1)
    if r.returncode != 0 or not out.exists():
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        raise GGZipError(f"{model}: llama-imatrix failed on {text}:\n{tail}")
    return out


@dataclass
class _Calibration:
    """What convert learns from an imatrix or a calibration text."""
    stats: dict | None = None     # {weight: E[x^2] per input column}
    source: str | None = None     # where stats came from (Keys.CONVERT_STATS)
    probe: object = None          # quantize.sparsity.SparsityProbe: the thresholds
    cov: dict | None = None       # {weight: E[x x^T] of its input}, for error feedback
    tokens: int = 0               # calibration tokens behind cov
    rows: dict | None = None      # {weight: g_i per output row} (quantize/fisher.py)
    rows_source: str = ""
    factors: dict = field(default_factory=dict)   # feedback factors, by shared input


def _stats_from_text(src: GGUFModel, text: Path, progress: bool, threads: int | None = None,
                     sparsity: tuple[float, float] = (0.0, 0.0), want_stats: bool = True,
                     want_cov: bool = False, want_rows: bool = False) -> _Calibration:
    """Calibration from a text.  Statistics (want_stats): llama-imatrix when it
    is built (llama.cpp's own graph and tokenizer), else ggzip's numpy forward
    pass.  Sparsity thresholds (sparsity = (ffn P, attn P), either > 0) and the
    input covariances of error feedback (want_cov): always the numpy pass,
    which then also gives the statistics if llama-imatrix does not.  Row
    weights (want_rows): the numpy backward pass of quantize/fisher.py."""
    try:
        body = text.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise GGZipError(f"{text}: cannot read calibration text: {e.strerror}") from None
    cal = _Calibration()
    if want_stats and _find_llama_tool("llama-imatrix") is not None:
        with tempfile.TemporaryDirectory(prefix="ggzip-imatrix-") as d:
            im = imatrix_from_text(src.path, text, Path(d) / "imatrix.gguf", threads)
            cal.stats, cal.source = load_imatrix(im), f"llama-imatrix on {text.name}"
    # the numpy forward pass: for thresholds, covariances, or statistics llama-imatrix did not give
    forward = any(sparsity) or want_cov or (want_stats and cal.stats is None)
    if not forward and not want_rows:
        return cal
    from ..quantize.calibrate import tokenize
    from ..quantize.sparsity import calibrate
    ids = tokenize(src, body)
    from tqdm import tqdm
    bar = tqdm(total=1, desc="sparsity calibration" if any(sparsity) else "calibrate",
               file=sys.stderr, leave=False, disable=None if progress else True)

    def step(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()
    cal.tokens = len(ids)
    if want_rows:
        from ..quantize.fisher import PROBES
        bar.set_description("output sensitivity (forward + backward)")
        cal.rows = _row_fisher(src, ids, step)
        cal.rows_source = f"output Fisher on {text.name} ({len(ids)} tokens, {PROBES} probes)"
        if not forward:
            bar.close()
            return cal
        bar.set_description("sparsity calibration" if any(sparsity) else "calibrate")
    cal.cov = {} if want_cov else None
    numpy_stats, probe = calibrate(src, ids, *sparsity, progress=step, cov=cal.cov)
    cal.probe = probe if any(sparsity) else None
    bar.close()
    if want_stats and cal.stats is None:
        cal.stats = numpy_stats
        cal.source = f"ggzip numpy forward pass on {text.name} ({len(ids)} tokens)"
    return cal


_ROWS_MEMO: dict = {}     # (file identity, token ids) -> row weights, for rate sweeps


def _row_fisher(src: GGUFModel, ids, progress) -> dict:
    """quantize.fisher.row_fisher of SRC on ids, remembered for the last input
    and text: converting one model at several rates in one process (bench_rd)
    runs the backward pass once."""
    import hashlib
    from ..quantize.fisher import row_fisher
    st = src.path.stat()
    key = (str(src.path.resolve()), st.st_size, st.st_mtime_ns,
           hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest())
    if key not in _ROWS_MEMO:
        _ROWS_MEMO.clear()
        _ROWS_MEMO[key] = row_fisher(src, ids, progress=progress)
    return _ROWS_MEMO[key]


def _copy_kv(writer, inp: GGUFModel) -> None:
    """The input's metadata pairs, byte for byte, but for the ones OUT gets anew."""
    h = inp.reader.header
    for k in inp.kv:
        # ggzip.*: the input's own container/convert keys (a file convert wrote
        # with --keep-float, say) would clash with the ones written for OUT
        if k.startswith("ggzip.") or k in ("general.architecture", "general.file_type",
                                           "general.quantization_version"):
            continue
        if k == "general.alignment":        # the writer aligns the data by its value
            writer.add_kv(k, inp.kv[k], h.kvs[k].vtype)
        else:
            writer.add_raw_kv(k, h.raw(h.kvs[k].start, h.kvs[k].end))


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    return (len(shape) == 2 and shape[1] % QK == 0 and name.endswith(".weight")
            and not any(k in name for k in _KEEP_FLOAT))


def convert(inp: str | Path, out: str | Path, **kw) -> ConvertReport:
    """Convert IN to OUT (see _convert).  A ggzip GGUF as input (one this command
    wrote with --keep-float, say) is decoded to a temporary plain GGUF first."""
    from ..container import decompress_file, is_ggzip
    inp, out = Path(inp), Path(out)
    if not (inp.is_file() and is_ggzip(inp)):
        return _convert(inp, out, **kw)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.input-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        decompress_file(inp, tmp, progress=kw.get("progress", True))
        return _convert(Path(tmp), out, **kw)
    finally:
        os.unlink(tmp)


def _convert(inp: str | Path, out: str | Path, *, alpha: float | None = None, prune: float = 0.0,
            target_bpw: float | None = None, step: float | None = None,
            imatrix: str | Path | None = None, calib_text: str | Path | None = None,
            theta: float = DEFAULT_THETA, progress: bool = True,
            keep_float: bool = False, plain: bool = False,
            threads: int | None = None, bpw_for: dict[str, float] | None = None,
            embd_share: float | None = None, no_fold=(), chunk_size: int = 0,
            sparsity: float = 0.0, attn_sparsity: float = 0.0,
            feedback: bool = False, rdo: float = 0.0, trellis: bool | None = None,
            random_tokens: int = RANDOM_TOKENS, fisher: bool = False,
            allocate: bool = False) -> ConvertReport:
    """Convert IN to a ggzip GGUF at OUT (Q8_0 tensors rANS-coded), or with
    plain=True to an ordinary Q8_0 GGUF; see the module docstring.  alpha None:
    ALPHA_IMATRIX with an imatrix, ALPHA_PROXY without.  keep_float: write the
    rescaled (and pruned) model in F32 without quantizing it, to check the folding
    through llama.cpp.  threads: rANS encoder and llama-imatrix threads (None: all cores).
    bpw_for: {glob: bits per weight} for the tensors whose name matches (the
    first match wins), e.g. {"token_embd.weight": 3.5}; a key may also be a
    compiled regex, searched in the name (llama-quantize's --tensor-type); others follow
    target_bpw / step.  embd_share: with target_bpw, code the token embedding at
    this share of it and the rest higher, at the same mean (split_rates; None:
    EMBD_SHARE_DEFAULT for the architecture, else 1 = uniform; a bpw_for pattern
    naming the token embedding takes precedence).  no_fold: folds left out
    (quantize.fold.FOLD_KEYS: "output", "v"), for embeddings or a quantized V cache.
    chunk_size: raw bytes per rANS chunk (0: the codec's default, 256 KiB).
    sparsity / attn_sparsity: P in [0, 1) of the CHESS thresholds of the FFN /
    of attn_q and attn_output (needs calib_text; see the module docstring).
    feedback: quantize with error feedback through the input covariances of
    ggzip's numpy forward pass over calib_text (quantize/feedback.py).
    fisher: row steps by output sensitivity: each block matrix's rows weighted
    by the squared output gradients of a numpy backward pass over calib_text
    (quantize/fisher.py: the sampled Fisher of the next-token distribution, or
    of the pooled embedding's direction for an encoder).
    allocate: with target_bpw, each group of tensors (one kind across the
    layers, or a tensor outside them) at its own rate by the output distortion
    it causes alone, measured by ggzip's numpy forward pass on calib_text (or
    on random_tokens random tokens), the same bytes in all (quantize/allocate.py);
    the token embedding and tensors a bpw_for pattern names keep their rates.
    rdo: rate-distortion optimised rounding with this weight on the rate (0:
    off, 1: the high-rate trade; feedback.quantize_feedback).
    random_tokens: without imatrix and calib_text, the statistics of this many
    tokens drawn at random from the vocabulary (data-free; 0: none, the
    weight-only proxy).
    trellis: trellis-coded quantization (q8.quantize_trellis) of the Q8_0
    weights (frames with the trellis flag), with feedback decided lane after lane
    (codec.tcq_feedback); None (default): on with target_bpw, unless rdo,
    plain or keep_float ask for plain rounding; True with any of those, or
    without target_bpw, is an error.

    The steps: check the options, read IN, choose every tensor's rate, gather
    activation statistics, plan the rescaling, decide each tensor's output type,
    then write the metadata and the tensors one by one."""
    inp, out = Path(inp), Path(out)
    _check_options(target_bpw, step, prune, bpw_for, alpha, embd_share)
    if not 0 <= random_tokens <= 1 << 20:
        raise GGZipError(f"--random-tokens {random_tokens}: must be in [0, {1 << 20}]")
    _check_sparsity(sparsity, attn_sparsity, calib_text, keep_float)
    _check_feedback(feedback, calib_text, prune, keep_float)
    _check_fisher(fisher, calib_text, keep_float)
    _check_allocate(allocate, target_bpw, keep_float)
    if not 0.0 <= rdo <= 10.0:
        raise GGZipError(f"--rdo {rdo}: must be in [0, 10]")
    if trellis and rdo:
        raise GGZipError("--trellis does not combine with --rdo (its path search "
                         "chooses every level itself)")
    if trellis and plain:
        raise GGZipError("--trellis needs ggzip frames: its levels cost a bit less only there, not with --plain")
    if trellis and target_bpw is None:
        raise GGZipError("--trellis needs --target-bpw (a --step is a rounding step; the trellis "
                         "would code levels on half of it)")
    if trellis is None:
        trellis = target_bpw is not None and not (rdo or plain or keep_float)
    t0 = time.perf_counter()
    src = GGUFModel(inp)
    from ..quantize.calibrate import CALIB_ARCHS, ENCODER_ARCHS
    for flag, on in (("--fisher", fisher), ("--allocate", allocate)):
        if on and src.arch not in CALIB_ARCHS:
            raise GGZipError(f"{inp}: {flag} runs ggzip's numpy graph, which knows "
                             f"{', '.join(sorted(CALIB_ARCHS))}, not {src.arch!r}")
    if allocate and calib_text is None and src.arch in ENCODER_ARCHS:
        # measured: EmbeddingGemma's dense_2 / dense_3 look harmless on a soup of
        # random tokens (-0.3 bits) and are its most sensitive tensors on text
        raise GGZipError(f"{inp}: --allocate on an encoder ({src.arch}) needs --calib-text: "
                         "pooled random tokens do not show which tensors its sentence vectors "
                         "depend on")
    shapes = {n: src.shape(n) for n in src.tensors}
    transposed = _sparse_transposed(src, shapes, sparsity, attn_sparsity)
    rates = _choose_rates(src, target_bpw, step, dict(bpw_for or {}), embd_share)
    cal = _activation_stats(src, imatrix, calib_text, progress, threads,
                            (sparsity, attn_sparsity), want_cov=feedback,
                            random_tokens=0 if keep_float else random_tokens,
                            want_rows=fisher)
    stats, stats_source, probe = cal.stats, cal.source, cal.probe
    if alpha is None:
        alpha = ALPHA_IMATRIX if stats is not None else ALPHA_PROXY
    if stats is None:
        stats_source = "weight-proxy (no imatrix: norm weights stand for activation scales" + \
            ("; alpha 0, so no rescaling)" if alpha == 0 else ")")
    plan = plan_rescale(src.arch, shapes, src.kv, src.float32, stats, alpha, source=str(inp),
                        no_fold=no_fold)
    if cal.rows:
        from ..quantize.fisher import row_factors
        plan.rows = {n: row_factors(g) for n, g in cal.rows.items()}
    thresholds = _threshold_tensors(src, shapes, probe, plan)
    kinds = _output_kinds(src, shapes, keep_float)
    if allocate:
        rates = _allocate_rates(src, kinds, transposed, plan, rates, calib_text, random_tokens,
                                theta, progress)

    dequantized = sorted({src.type_name(n) for n, k in kinds.items()
                          if k != "copy" and src.type_name(n) not in FLOAT_TYPES})
    report = ConvertReport(inp=inp, out=out, arch=src.arch, stats_source=stats_source,
                           dequantized_from=dequantized, alpha=alpha, plain=plain,
                           sparsity=sparsity, attn_sparsity=attn_sparsity,
                           rows_source=cal.rows_source, allocation=rates.allocation,
                           float_bytes=sum(int(np.prod(shapes[n])) * 4 for n in kinds))

    import gguf
    from ..container import GGZipWriter
    w = GGZipWriter(out, plain=plain, threads=threads, chunk_size=chunk_size)     # GGZipError if OUT's folder is unwritable
    try:
        _write_metadata(w, src, report, keep_float=keep_float, prune=prune,
                        rate_note=rates.note, fold_flags=plan.fold_flags(src.kv),
                        transposed=transposed)
        from tqdm import tqdm
        bar = tqdm(total=report.float_bytes, unit="B", unit_scale=True, desc="convert",
                   file=sys.stderr, disable=None if progress else True, leave=False)
        for name, kind in kinds.items():
            report.tensors.append(_write_tensor(w, src, name, kind, plan, rates, prune, theta,
                                                name in transposed,
                                                None if name in transposed else
                                                _feedback_factor(cal, plan, name), rdo, trellis))
            bar.update(int(np.prod(shapes[name])) * 4)
        bar.close()
        for name, t in thresholds.items():
            w.add_tensor(name, gguf.GGMLQuantizationType.F32, t.shape[::-1], t)
            report.tensors.append(TensorReport(name, t.shape, "F32"))
        report.q8_bytes = w.raw_bytes
        w.close()
    except BaseException:
        w.abort()
        raise
    report.file_bytes = out.stat().st_size
    report.seconds = time.perf_counter() - t0
    return report


def _check_options(target_bpw, step, prune, bpw_for, alpha, embd_share) -> None:
    """Refuse out-of-range options before reading anything."""
    if target_bpw is not None and step is not None:
        raise GGZipError("give --target-bpw or --step, not both")
    if target_bpw is not None and not 0.05 <= target_bpw <= 8.5:
        raise GGZipError(f"--target-bpw {target_bpw}: must be in [0.05, 8.5]")
    if step is not None and not step > 0:
        raise GGZipError(f"--step {step}: must be > 0")
    if not 0.0 <= prune < 1.0:
        raise GGZipError(f"--prune {prune}: must be in [0, 1)")
    for pat, b in (bpw_for or {}).items():
        if not 0.05 <= b <= 8.5:
            raise GGZipError(f"{_pattern_text(pat)}={b:g}: bits per weight must be in [0.05, 8.5]")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise GGZipError(f"--alpha {alpha}: must be in [0, 1]")
    if embd_share is not None and not 0.0 < embd_share <= 1.0:
        raise GGZipError(f"--embd-share {embd_share}: must be in (0, 1]")
    if embd_share is not None and target_bpw is None:
        raise GGZipError("--embd-share needs --target-bpw")


def _check_feedback(feedback: bool, calib_text, prune: float, keep_float: bool) -> None:
    if not feedback:
        return
    if calib_text is None:
        raise GGZipError("--feedback needs --calib-text FILE: error feedback weighs each "
                         "weight's error by its input's covariance on that text")
    if prune > 0:
        raise GGZipError("--feedback cannot go with --prune: feedback would refill the "
                         "pruned weights")
    if keep_float:
        raise GGZipError("--feedback cannot go with --keep-float: nothing is quantized")


def _check_fisher(fisher: bool, calib_text, keep_float: bool) -> None:
    if not fisher:
        return
    if calib_text is None:
        raise GGZipError("--fisher needs --calib-text FILE: the row weights are the output "
                         "gradients of ggzip's numpy pass over that text")
    if keep_float:
        raise GGZipError("--fisher cannot go with --keep-float: nothing is quantized")


def _check_allocate(allocate: bool, target_bpw, keep_float: bool) -> None:
    if allocate and target_bpw is None:
        raise GGZipError("--allocate needs --target-bpw: it moves bits between tensors "
                         "at the same total")
    if allocate and keep_float:
        raise GGZipError("--allocate cannot go with --keep-float: nothing is quantized")


def _allocate_rates(src: GGUFModel, kinds: dict, transposed, plan, rates: _Rates, calib_text,
                    random_tokens: int, theta: float, progress: bool) -> _Rates:
    """rates with the tensors at target_bpw (not the token embedding, not those
    a bpw_for pattern names, not the transposed sparse ones) regrouped by
    quantize.allocate: each group quantized alone (plain rounding, no feedback)
    and its output distortion measured on the calibration text's tokens, or on
    random tokens without one."""
    import gguf
    from tqdm import tqdm
    from ..quantize import allocate as A
    from ..quantize.calibrate import random_text, tokenize
    pool = [n for n, k in kinds.items()
            if k == "Q8_0" and A.measurable(n) and n not in transposed
            and not any(_name_matches(n, pat) for pat in rates.bpw_for)]
    groups: dict[str, list[str]] = {}
    for n in pool:
        groups.setdefault(A.group_of(n), []).append(n)
    if len(groups) < 2:
        print(f"ggzip convert: --allocate: {len(groups)} group of tensors left at the target "
              "rate (the others have rates of their own): nothing to allocate", file=sys.stderr)
        return rates
    if calib_text is not None:
        try:
            body = Path(calib_text).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise GGZipError(f"{calib_text}: cannot read calibration text: {e.strerror}") from None
        where = Path(calib_text).name
    elif src.kv.get("tokenizer.ggml.tokens"):
        body, where = random_text(src.kv, random_tokens or RANDOM_TOKENS), "random tokens"
    else:
        raise GGZipError(f"{src.path}: --allocate needs --calib-text (the model has no "
                         "vocabulary to draw random tokens from)")
    ids = tokenize(src, body)

    def perturbed(name, w):
        a = plan.apply(name, w)
        blocks, _ = quantize_tensor(name, a, row_factor=plan.row_factor(name),
                                    col_stat=plan.rescaled_stat(name),
                                    target_bpw=rates.of(name)[0], step=None, theta=theta,
                                    source=str(src.path))
        q = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0).reshape(a.shape)
        return plan.unapply(name, q)
    bar = tqdm(total=1, desc="rate allocation (output sensitivity)", file=sys.stderr,
               leave=False, disable=None if progress else True)

    def step(done, total):
        bar.total, bar.n = total, done
        bar.refresh()
    d = A.output_distortion(src, ids, groups, perturbed, progress=step)
    bar.close()
    n = {g: sum(int(np.prod(src.shape(x))) for x in names) for g, names in groups.items()}
    r0 = {g: rates.of(names[0])[0] for g, names in groups.items()}
    r = A.allocate(n, d, r0)
    per = {x: r[g] for g, names in groups.items() for x in names}
    moved = ", ".join(f"{g.removesuffix('.weight')} {r[g] - r0[g]:+.2f}" for g in sorted(r, key=r.get))
    return _Rates(rates.target_bpw, rates.step, {**rates.bpw_for, **per},
                  f"{rates.note}; allocated by output sensitivity on {where} "
                  f"({len(ids)} tokens): {moved}", allocation=moved)


def _feedback_factor(cal: _Calibration, plan, name: str) -> Factors | None:
    """The feedback factors of weight `name`'s damped input covariance
    (_hessian), kept once per shared input (attn_q/k/v, ffn_gate/up share
    theirs and their column scales), or None without feedback."""
    if cal.cov is None or name not in cal.cov:
        return None
    key = (id(cal.cov[name]), id(plan.cols.get(name)))
    if key not in cal.factors:
        cal.factors.clear()             # inputs come layer by layer: keep one
        cal.factors[key] = Factors(_hessian(cal, plan, name))
    return cal.factors[key]


def _hessian(cal: _Calibration, plan, name: str) -> np.ndarray:
    """E[x' x'^T] of the rescaled input x' = x / s of weight `name`, damped for
    the number of calibration tokens (feedback.damping)."""
    h = cal.cov[name]
    s = plan.cols.get(name)
    if s is not None:
        inv = 1.0 / s.astype(np.float64)
        h = h * inv[:, None] * inv[None, :]
    else:
        h = h.copy()
    d = np.diag(h)
    h[np.diag_indices_from(h)] += damping(len(d), cal.tokens) * max(float(d.mean()), 1e-30)
    return h


def _check_sparsity(sparsity: float, attn_sparsity: float, calib_text, keep_float: bool) -> None:
    for flag, p in (("--sparsity", sparsity), ("--attn-sparsity", attn_sparsity)):
        if not 0.0 <= p < 1.0:
            raise GGZipError(f"{flag} {p}: must be in [0, 1)")
    if sparsity or attn_sparsity:
        flag = "--sparsity" if sparsity else "--attn-sparsity"
        if calib_text is None:
            raise GGZipError(f"{flag} needs --calib-text FILE: the thresholds come from the "
                             "model's activations on that text")
        if keep_float:
            raise GGZipError(f"{flag} cannot go with --keep-float: the sparse kernels of the "
                             "patched llama.cpp read Q8_0 weights only")


def _sparse_transposed(src: GGUFModel, shapes: dict, sparsity: float,
                       attn_sparsity: float) -> list[str]:
    """Names of the weights to store transposed (constants.SPARSE_TRANSPOSED_*),
    after checking that the model can have thresholds."""
    from ..quantize.sparsity import SPARSE_ARCHS
    if not (sparsity or attn_sparsity):
        return []
    if src.arch not in SPARSE_ARCHS:
        raise GGZipError(f"{src.path}: activation sparsity is supported for "
                         f"{', '.join(SPARSE_ARCHS)}, not for {src.arch!r}")
    kinds = (SPARSE_TRANSPOSED_FFN if sparsity else ()) + \
        (SPARSE_TRANSPOSED_ATTN if attn_sparsity else ())
    n_layer = int(src.kv.get(f"{src.arch}.block_count", 0))
    names = []
    for il in range(n_layer):
        for kind in kinds:
            name = f"blk.{il}.{kind}.weight"
            shp = shapes.get(name)
            if shp is None or len(shp) != 2:
                raise GGZipError(f"{src.path}: activation sparsity needs a 2-D tensor {name!r}")
            if shp[0] % QK:
                raise GGZipError(f"{src.path}: tensor {name!r} has {shp[0]} outputs, not a "
                                 f"multiple of {QK}: it cannot be stored transposed in Q8_0")
            names.append(name)
    return names


def _threshold_tensors(src: GGUFModel, shapes: dict, probe, plan) -> dict[str, np.ndarray]:
    """{blk.N.<weight>.sparse_thr: F32 thresholds in the file's coordinates}."""
    if probe is None:
        return {}
    out = probe.tensors(plan)
    for name, t in out.items():
        weight = name[:-len(SPARSE_THR_SUFFIX)] + ".weight"
        # ffn_up: one per output (intermediate channel); attn: one per input
        n = shapes[weight][0] if weight.endswith("ffn_up.weight") else shapes[weight][1]
        if t.shape != (n,) or not np.isfinite(t).all():
            raise GGZipError(f"{src.path}: thresholds {name!r} of shape {t.shape} do not fit "
                             f"{weight!r} of shape {shapes[weight]} (or are not finite)")
    return out


@dataclass
class _Rates:
    """How the step of each quantized tensor is chosen: a bpw_for pattern that
    matches its name (first match wins, _name_matches), else target_bpw, else step."""
    target_bpw: float | None
    step: float | None
    bpw_for: dict[str, float]
    note: str                     # what Keys.CONVERT_RATE records
    allocation: str = ""          # --allocate: each group's bits from the mean, for the summary

    def of(self, name: str) -> tuple[float | None, float | None]:
        """(target bits per weight, step) of one tensor: exactly one is None."""
        for pat, b in self.bpw_for.items():
            if _name_matches(name, pat):
                return b, None
        return self.target_bpw, self.step


def _name_matches(name: str, pat) -> bool:
    """A bpw_for key: a glob matching the whole name (--bpw-for), or a compiled
    regex found anywhere in it (--tensor-type, as llama-quantize matches)."""
    return bool(pat.search(name)) if isinstance(pat, re.Pattern) else fnmatch.fnmatchcase(name, pat)


def _pattern_text(pat) -> str:
    return f"--tensor-type {pat.pattern}" if isinstance(pat, re.Pattern) else f"--bpw-for {pat}"


def _choose_rates(src: GGUFModel, target_bpw: float | None, step: float | None,
                  bpw_for: dict[str, float], embd_share: float | None) -> _Rates:
    """Neither rate given: step 1 (about Q8_0).  With target_bpw, the token
    embedding may be coded at a share of it (split_rates), unless a bpw_for
    pattern names it."""
    if target_bpw is None and step is None:
        step = DEFAULT_STEP
    note = f"target-bpw={target_bpw}" if target_bpw is not None else f"step={step}"
    share = EMBD_SHARE_DEFAULT.get(src.arch, 1.0) if embd_share is None else embd_share
    if target_bpw is not None and share != 1.0 and \
            not any(_name_matches(EMBD_NAME, pat) for pat in bpw_for):
        target_bpw, embd_rate = split_rates({n: src.shape(n) for n in src.tensors}, target_bpw, share)
        bpw_for = {**embd_rate, **bpw_for}
        if embd_rate:
            note += f" ({EMBD_NAME} at {share:g}x: {embd_rate[EMBD_NAME]:.3f}, the rest {target_bpw:.3f})"
    return _Rates(target_bpw, step, bpw_for, note)


def _activation_stats(src: GGUFModel, imatrix, calib_text, progress: bool, threads: int | None,
                      sparsity: tuple[float, float] = (0.0, 0.0),
                      want_cov: bool = False, random_tokens: int = 0,
                      want_rows: bool = False) -> _Calibration:
    """Statistics from an imatrix file or a calibration text, else from
    random_tokens tokens drawn from the vocabulary (0: none).  The thresholds
    (sparsity > 0), the covariances (want_cov) and the row weights (want_rows)
    always come from the calibration text."""
    if imatrix is not None:
        stats = load_imatrix(imatrix)
        if not any(n in src.tensors for n in stats):
            raise GGZipError(f"{imatrix}: no imatrix entry names a tensor of {src.path} "
                             "(imatrix of another model?)")
        cal = _Calibration()
        if any(sparsity) or want_cov or want_rows:
            cal = _stats_from_text(src, Path(calib_text), progress, threads, sparsity,
                                   want_stats=False, want_cov=want_cov, want_rows=want_rows)
        cal.stats, cal.source = stats, f"imatrix:{Path(imatrix).name}"
        return cal
    if calib_text is not None:
        return _stats_from_text(src, Path(calib_text), progress, threads, sparsity,
                                want_cov=want_cov, want_rows=want_rows)
    if random_tokens > 0:
        return _stats_from_random(src, random_tokens, progress, threads)
    return _Calibration()


def _stats_from_random(src: GGUFModel, n_tokens: int, progress: bool, threads: int | None) -> _Calibration:
    """Data-free statistics: those of n_tokens tokens drawn at random from the
    vocabulary (calibrate.random_text), by llama-imatrix or the numpy pass as
    for a calibration text.  Where neither can run this model, no statistics,
    said on stderr."""
    from ..quantize.calibrate import random_text
    if not src.kv.get("tokenizer.ggml.tokens"):
        print(f"ggzip convert: {src.path}: no vocabulary to draw random tokens from: converting "
              "without statistics", file=sys.stderr)
        return _Calibration()
    try:
        with tempfile.TemporaryDirectory(prefix="ggzip-random-") as d:
            text = Path(d) / "random-tokens.txt"
            text.write_text(random_text(src.kv, n_tokens), encoding="utf-8")
            cal = _stats_from_text(src, text, progress, threads)
    except GGZipError as e:
        print(f"ggzip convert: {src.path}: no data-free statistics ({e}); converting without "
              "statistics", file=sys.stderr)
        return _Calibration()
    cal.source = f"data-free: {cal.source.split(' on ')[0]} on {n_tokens} random tokens"
    return cal


def _output_kinds(src: GGUFModel, shapes: dict, keep_float: bool) -> dict[str, str]:
    """{tensor name: "copy" (integer tensors, as they are), "Q8_0" or "F32"} in
    the input's order, decided before anything is written."""
    kinds = {}
    for name, t in src.tensors.items():
        ty = t.type_name            # unknown type ids already fail in GGUFModel
        if ty in ("I8", "I16", "I32", "I64"):
            kinds[name] = "copy"
        elif _quantizable(name, shapes[name]):
            kinds[name] = "F32" if keep_float else "Q8_0"
        else:
            kinds[name] = "F32"
    return kinds


def _write_metadata(w, src: GGUFModel, report: ConvertReport, *, keep_float: bool,
                    prune: float, rate_note: str, fold_flags: dict[str, bool],
                    transposed: list[str] = ()) -> None:
    """The input's metadata, then the file type and what convert did (Keys.CONVERT_*)."""
    import gguf
    from ..container.gguf_io import VT
    w.add_kv("general.architecture", src.arch, VT.STRING)
    _copy_kv(w, src)
    w.add_kv(gguf.Keys.General.FILE_TYPE, int(gguf.LlamaFileType.ALL_F32 if keep_float else
                                              gguf.LlamaFileType.MOSTLY_Q8_0), VT.UINT32)
    w.add_kv(gguf.Keys.General.QUANTIZATION_VERSION, gguf.GGML_QUANT_VERSION, VT.UINT32)
    w.add_float32(Keys.CONVERT_ALPHA, float(report.alpha))
    w.add_float32(Keys.CONVERT_PRUNE, float(prune))
    w.add_string(Keys.CONVERT_RATE, rate_note)
    w.add_string(Keys.CONVERT_STATS, report.stats_source)
    if report.rows_source:
        w.add_string(Keys.CONVERT_ROWS, report.rows_source)
    w.add_string(Keys.CONVERT_SOURCE, "float" if not report.dequantized_from else
                 "dequantized from " + "/".join(report.dequantized_from))
    for key, done in fold_flags.items():
        w.add_kv(key, done, VT.BOOL)
    if report.sparsity:
        w.add_float32(Keys.SPARSE_FFN, float(report.sparsity))
    if report.attn_sparsity:
        w.add_float32(Keys.SPARSE_ATTN, float(report.attn_sparsity))
    if transposed:
        w.add_kv(Keys.SPARSE_TRANSPOSED, list(transposed), VT.ARRAY, VT.STRING)


def _write_tensor(w, src: GGUFModel, name: str, kind: str, plan, rates: _Rates,
                  prune: float, theta: float, transpose: bool = False,
                  fb: Factors | None = None, rdo: float = 0.0, trellis: bool = False) -> TensorReport:
    """Rescale (and prune) one tensor, quantize it if kind is Q8_0, hand it to
    the writer; kind "copy" passes it through untouched.  transpose: a Q8_0
    weight stored as W'^T (for the sparse kernels), numpy (n_in, n_out), always
    without feedback (its rows are inputs).  fb: the feedback factors of its
    rescaled input (_feedback_factor; None: no feedback)."""
    import gguf
    shp = src.shape(name)
    ne = tuple(reversed(shp))
    if kind == "copy":
        t = src.tensors[name]
        w.add_tensor(name, t.ggml_type, t.ne, src.reader.data(name))
        return TensorReport(name, shp, t.type_name)
    if transpose:    # Q8_0 whatever its input width: only the outputs form blocks
        target_bpw, step = rates.of(name)
        a = plan.apply(name, src.float32(name))
        if prune > 0:       # by rows = outputs, as for every weight
            a = prune_rows(a, prune, plan.rescaled_stat(name))
        a = np.ascontiguousarray(a.T)
        # quantized by rows of W'^T (one step per input channel), without
        # row_factor / col_stat: nothing divides these weights' outputs, and the
        # fold already evened out their input columns, which are these rows
        blocks, report = quantize_tensor(name, a, target_bpw=target_bpw, step=step, theta=theta,
                                         source=str(src.path))
        w.add_tensor(name, gguf.GGMLQuantizationType.Q8_0, a.shape[::-1], blocks)
        return report
    if kind == "F32":
        a = plan.apply(name, src.float32(name))
        if prune > 0 and _quantizable(name, shp):
            a = prune_rows(a, prune, plan.rescaled_stat(name))
        a = np.ascontiguousarray(a, np.float32)
        if not np.isfinite(a).all():
            raise GGZipError(f"{src.path}: tensor {name!r} holds NaN or infinite values")
        w.add_tensor(name, gguf.GGMLQuantizationType.F32, ne, a)
        return TensorReport(name, shp, "F32")
    target_bpw, step = rates.of(name)
    blocks, report = quantize_streamed(
        name, shp, lambda r: plan.apply(name, src.rows32(name, r), rows=r),
        row_factor=plan.row_factor(name), col_stat=plan.rescaled_stat(name),
        prune=prune, target_bpw=target_bpw, step=step, theta=theta, source=str(src.path),
        fb=fb, rdo=rdo, trellis=trellis, chunk_size=w.chunk_size)
    w.add_tensor(name, gguf.GGMLQuantizationType.Q8_0, ne, blocks, trellis=report.trellis)
    return report


def quantize_tensor(name: str, w: np.ndarray, **kw) -> tuple[np.ndarray, TensorReport]:
    """Prune, pick the row steps, quantize one (rescaled) 2-D tensor held in
    memory: its Q8_0 bytes and a report of its rate and SNR (see quantize_streamed)."""
    w = np.asarray(w, np.float32)
    return quantize_streamed(name, w.shape, lambda r: w[r], **kw)


def quantize_streamed(name: str, shape: tuple[int, int], get_rows, *, row_factor=None,
                      col_stat=None, prune: float = 0.0, target_bpw: float | None = None,
                      step: float | None = 1.0, theta: float = DEFAULT_THETA,
                      source: str = "model", chunk: int = 1 << 21,
                      fb: Factors | None = None, rdo: float = 0.0,
                      trellis: bool = False, chunk_size: int = 0
                      ) -> tuple[np.ndarray, TensorReport]:
    """Quantize a (rescaled) 2-D tensor read by rows: get_rows(slice or index
    array) -> float32 rows.  The base step comes from a sample of ~256k weights
    (evenly spread rows), then row chunks of ~`chunk` weights are quantized one
    after the other, so the float tensor is never whole in memory: the peak is
    the Q8_0 output (1.06 bytes/weight) plus one chunk.  fb: feedback.Factors
    of the input's E[x x^T]: quantize with error feedback (quantize/feedback.py;
    with the trellis, lane after lane: codec.tcq_feedback); the base step found
    without feedback is then corrected on the sample for the rate feedback's
    symbols actually cost.  rdo > 0: rate-distortion
    optimised rounding (feedback.quantize_feedback), code lengths from plain
    rounding's histogram of the same rows.  trellis: trellis-coded levels
    (q8.quantize_trellis) with lanes restarting where the frame's chunks of
    chunk_size raw bytes do, rated by what their frame pays."""
    n_rows, n_cols = shape
    if fb is not None and fb.cols != n_cols:
        raise GGZipError(f"{source}: tensor {name!r}: input covariance of {fb.cols} "
                         f"columns does not fit {n_cols} columns")

    from ..codec import rows_per_chunk
    row_bytes = n_cols // QK * BLOCK_BYTES
    rpc = rows_per_chunk(n_rows * row_bytes, row_bytes, chunk_size)

    def trellis_rate(w, d16):
        return trellis_bits(quantize_trellis(w, d16, rpc)[1]) / w.size

    def fb_rate(w, d16):        # symbol bits per weight with feedback
        if trellis:
            return trellis_bits(quantize_trellis(w, d16, rpc, fb.get(lanes=True))[1]) / w.size
        return symbol_entropy(quant(w, d16))

    def quant(w, d16):
        if fb is None and not rdo:
            return quantize_rows(w, d16, theta)
        lengths = code_lengths(quantize_rows(w, d16, theta)) if rdo else None
        return quantize_feedback(w, d16, fb and fb.get(), theta, lengths=lengths, rdo=rdo)

    def prep(rows):
        w = np.ascontiguousarray(get_rows(rows), np.float32)
        if prune > 0:
            w = prune_rows(w, prune, col_stat)
        amax = block_absmax(w)      # per block: a block with outliers escapes (q8.row_steps)
        if not np.isfinite(amax).all():
            raise GGZipError(f"{source}: tensor {name!r} holds NaN or infinite values")
        return w, amax

    sample = sample_rows(n_rows, n_cols)
    ws, amax_s = prep(sample)
    rf_s = None if row_factor is None else row_factor[sample]
    if target_bpw is not None:
        base = step_for_rate(ws, target_bpw, rf_s, amax_s, theta,
                             symbol_bits=trellis_rate if trellis else None)
        if trellis:
            trellis, base = _trellis_pays(ws, base, target_bpw, rf_s, amax_s, theta, rpc, col_stat)
        if fb is not None or rdo:
            base = _feedback_rate(ws, base, target_bpw, rf_s, amax_s, fb_rate)
    else:   # --step S: S x the median over (sampled) rows of absmax / 127
        amax_r = amax_s.max(axis=1)
        base = step * reference_step(amax_r if rf_s is None else amax_r / rf_s)
    del ws
    out = np.empty((n_rows, n_cols // QK * BLOCK_BYTES), np.uint8)
    rd = RateDistortion(n_cols, col_stat)
    per = max(1, chunk // max(n_cols, 1))
    if trellis:     # whole frame chunks, so that the lanes restart where the coder's do
        per = max(rpc, per // rpc * rpc)
    for r0 in range(0, n_rows, per):
        sl = slice(r0, min(n_rows, r0 + per))
        w, amax = prep(sl)
        d16 = row_steps(base, None if row_factor is None else row_factor[sl], amax)
        counts = None
        if trellis:
            q, counts = quantize_trellis(w, d16, rpc, fb and fb.get(lanes=True))
        else:
            q = quant(w, d16)
        out[sl] = pack_q8_0(q, d16)
        rd.add(w, q, d16, counts)
    return out, TensorReport(name, shape, "Q8_0", rd.result(), base, trellis)


def _trellis_pays(ws: np.ndarray, base: float, target_bpw: float, rf, amax, theta: float,
                  rpc: int, col_stat) -> tuple[bool, float]:
    """(whether the trellis beats rounding at target_bpw on the sample rows ws,
    the base step of the winner).  It does wherever its step, half a rounding
    step, stays above the blocks' absmax/127; at high rates that floor holds
    it (EmbeddingGemma at 7 bpw: 38.7 dB against rounding's 40.0), so each
    tensor keeps the one with the smaller (column-weighted) error."""
    cw = None if col_stat is None else np.asarray(col_stat, np.float64)

    def err(q, d):
        e = np.square(dequantize_rows(q, d) - ws, dtype=np.float64)
        return float((e.sum(axis=0) * cw).sum() if cw is not None else e.sum())

    d_t = row_steps(base, rf, amax)
    base_r = step_for_rate(ws, target_bpw, rf, amax, theta)
    d_r = row_steps(base_r, rf, amax)
    if err(quantize_trellis(ws, d_t, rpc)[0], d_t) <= err(quantize_rows(ws, d_r, theta), d_r):
        return True, base
    return False, base_r


def _feedback_rate(ws: np.ndarray, base: float, target_bpw: float, rf, amax, symbol_bits,
                   rounds: int = 3, tol: float = 0.01) -> float:
    """The base step at which error feedback's symbols on the sample rows ws cost
    target_bpw: feedback spreads symbols a little (a few hundredths of a bit at
    4 bpw), so the step found for plain rounding is raised by the excess, about
    one bit per doubling, and checked again."""
    nb = ws.shape[1] // QK
    for _ in range(rounds):
        d = row_steps(base, rf, amax)
        rate = symbol_bits(ws, d) + scale_stream_bits(d, nb) / ws.size
        if abs(rate - target_bpw) <= tol:
            break
        base *= 2.0 ** (rate - target_bpw)
    return base

