#!/usr/bin/env python3
"""Rate vs quality: ggzip against llama.cpp's quantization types, every point run in llama.cpp.

    python scripts/bench_rd.py [--models smollm2,gemma3-270m,embeddinggemma-300m]
                               [--rates 3.5,3.9,4.5,5,6] [--kquants IQ4_XS,Q3_K_M,...]
                               [--variants NAME[,NAME...]] [--quick] [--chunks 6]
                               [--sentences 300] [--plain] [--threads N] [--work DIR]
                               [--keep-gguf] [--out FILE] [--png FILE] [--no-write]
    python scripts/bench_rd.py --per-tensor [--variants ...] [--no-write]

Models (each made into one F32 GGUF, the input of every method):
  * SmolLM2-135M-Instruct and Gemma-3-270M (causal): they exist here only as
    llama.cpp GGUFs (Q4_1 with a Q8_0 embedding; Q4_K_M), so they are *dequantized*
    to F32 with gguf-py: their weights lie on the source's grid, and a llama.cpp
    type that re-creates that grid re-codes tensors without loss ("flattered").
  * EmbeddingGemma-300M: true F32 safetensors, written as a GGUF here without torch,
    as llama.cpp's convert_hf_to_gguf.py (EmbeddingGemma) names it: Gemma norms
    stored as 1 + w, the sentence-transformers 2_Dense/3_Dense projections as
    dense_2/dense_3, mean pooling; the tokenizer metadata is copied from the
    Gemma-3-270M GGUF (the same 262144-token SentencePiece vocabulary).
Methods:
  * llama.cpp: build/llama/bin/llama-quantize TYPE, without and with the imatrix
    (Q8_0 ignores it).  Causal models: CAUSAL_KQUANTS (IQ4_XS, IQ4_NL, Q3_K_S/M/L,
    Q2_K and the types that may re-code the source's grid, Q4_K_M, Q5_K_M, Q6_K,
    Q8_0; SmolLM2 also Q4_0, Q4_1); EmbeddingGemma: EMBED_KQUANTS.  A type
    llama-quantize refuses is a row saying so.  Both causal models have rows of 576
    / 640 values, not a multiple of 256: llama-quantize codes such tensors in a
    fallback type of 32-value blocks (IQ4_NL, Q4_0, Q5_0, ...), so every point lists
    the types it holds.
  * ggzip convert --target-bpw B (uniform rates): with the same imatrix (the
    converter's default alpha with statistics) and, for the causal models (for
    EmbeddingGemma with --plain), without an imatrix: then convert's default is
    data-free statistics, llama-imatrix on tokens drawn at random from the
    vocabulary (convert --random-tokens).  Causal rates CAUSAL_RATES, EmbeddingGemma EMBED_RATES.
  * --variants NAME,...: levers of convert (VARIANTS: extra keyword arguments of
    ggzip.convert.convert() layered on the imatrix curve), each its own curve
    "ggzip+NAME + imatrix" on the causal models; a variant whose keywords convert()
    does not accept (yet) is skipped with a note.
  * EmbeddingGemma also with split rates (--embd-share S: token_embd.weight at S x B,
    the other tensors raised to keep B; convert's default there is 0.77): the share
    is picked among SHARES at 3.9 bpw by the embedding cosine on the calibration
    text's sentences, never the evaluation's; the "ggzip" curve has uniform rates.
  The imatrix is llama-imatrix's on tests/data/declaration.txt (calibration); every
  evaluation text is another one (scripts/data/alice-ch1-3.txt, Alice's Adventures
  in Wonderland, chapters I-III, public domain).
Rate, bits per weight: 8 x (bytes of all tensor data in the file) / (number of
  values of all tensors): every weight, the token embedding and norms included,
  metadata (tokenizer, ~4 MB) excluded.  A ggzip file counts its rANS frames: a
  ggzip GGUF as stored; a plain Q8_0 GGUF from convert as ggzip.codec.encode's frame
  of each Q8_0 tensor (what `ggzip compress` stores), other tensors as they are.
Quality:
  * weight SNR: over every 2-D weight matrix (the token embedding included),
    size-weighted mean of 10 log10(|W|^2/|W-W_hat|^2) per tensor, W from the F32
    GGUF; ggzip's rescaling is undone first (W_hat in W's coordinates; the plan is
    rebuilt from the file's alpha and statistics and checked on its norm vectors);
  * causal models: llama-perplexity on the evaluation text, --chunks N of 512
    tokens: KL divergence of each scored token's next-token distribution from the
    F32 model's (--kl-divergence), how often the top token agrees, and perplexity;
    per llama.cpp type (not flattered) the ggzip rate at equal KLD (log KLD
    interpolated linearly in bits/weight on ggzip's curve of the same statistics)
    and its ratio to the type's rate; issue 16's target at 0.75 x IQ4_XS's bytes;
  * EmbeddingGemma-300M: llama-embedding of the first S sentences of the text
    (mean pooling, L2-normalized): cosine to the F32 model's embedding, mean and
    worst over sentences.
  * --per-tensor (section "rd-tensor", docs/rd_tensor.png): EmbeddingGemma's
    attn_q/k/v/output and ffn_gate/up/down of an early, a middle and a late layer,
    the imatrix-weighted weight SNR of each tensor against its own bits per weight:
    `llama-quantize --pure --imatrix` at TENSOR_TYPES against ggzip convert
    --target-bpw B --imatrix at TENSOR_RATES.
Cache: everything (F32 GGUF, imatrix, reference outputs, GGUFs, one JSON per
point) lives under build/bench-rd/REV/MODEL/, REV = the source hash (a sha256 of
every file that determines a point: SOURCES below, i.e. the quantizer, converter,
container and codec, the C codec, the llama.cpp patches and pin, this script and
its texts) and a hash of every run-wide tool parameter (chunks, sentences,
threads, context, the shares tried); a point's file names carry its own (method,
rate, imatrix, share, variant).  A cache of another revision is never read (and
is removed at start), so the table is always made by one revision; an interrupted
run of the same revision resumes.  A point's GGUF is deleted once its JSON is
written (--keep-gguf keeps it).  The section header gives the command, the git
revision, the source hash and how many points this invocation computed.  Writes
the tables to BENCHMARKS.md (section "rd", or --out FILE) and the curves to
docs/rd.png unless --no-write.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import mmap
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmd import BENCH_MD, llama_stat, provenance, source_hash, write_section  # noqa: E402

from ggzip.convert import GGUFModel, convert  # noqa: E402
from ggzip.convert.convert import (EMBD_NAME, EMBD_SHARE_DEFAULT, KEY_ALPHA, KEY_STATS, RANDOM_TOKENS,  # noqa: E402
                                   _find_llama_tool, _quantizable, _stats_from_random, split_rates)
from ggzip.container.gguf_io import parse_header  # noqa: E402
from ggzip.convert.safetensors import SafeTensors  # noqa: E402
from ggzip.quantize import load_imatrix, plan_rescale  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CALIB_TEXT = ROOT / "tests" / "data" / "declaration.txt"
EVAL_TEXT = ROOT / "scripts" / "data" / "alice-ch1-3.txt"
# the models, cheapest first; the causal ones are llama.cpp GGUFs made F32 here
MODELS = ("smollm2", "gemma3-270m", "embeddinggemma-300m")
CAUSAL = {"smollm2": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}
EMBED_KQUANTS = ["Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
CAUSAL_KQUANTS = ["IQ4_XS", "IQ4_NL", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q2_K",
                  "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
EXTRA_KQUANTS = {"smollm2": ["Q4_0", "Q4_1"]}   # its source's own types
CAUSAL_RATES = ["3.5", "3.9", "4.5", "5", "6"]
EMBED_RATES = ["3.5", "3.9", "5", "6", "7"]
# convert's levers, layered on the imatrix curve (extra keyword arguments of
# ggzip.convert.convert()); skipped while convert() does not accept them
# ("all" is feedback with rdo; an earlier rate allocation, white noise on the
# outputs, was tried and removed, git 761f6e4: "allocate" is today's, which
# quantizes each tensor kind alone and measures the output)
VARIANTS = {
    "feedback": {"feedback": True, "calib_text": CALIB_TEXT},
    "rdo": {"rdo": 1.0},             # the weight on the rate: 1 = the high-rate trade
    "rdo2": {"rdo": 2.0},
    "all": {"feedback": True, "rdo": 2.0, "calib_text": CALIB_TEXT},   # rdo 2: best with feedback at 3.9 bpw
    "alpha0": {"alpha": 0.0},        # the imatrix without the rescaling
    # convert's default is trellis-coded quantization (the trellis frame flag), with
    # feedback too (lane after lane); this is plain rounding to the same grid's
    # step, frames without the flag (rdo rounds too, so "all" does)
    "rounding": {"trellis": False},
    # row steps by output sensitivity (quantize/fisher.py), alone and with feedback
    "fisher": {"fisher": True, "calib_text": CALIB_TEXT},
    "feedback+fisher": {"feedback": True, "fisher": True, "calib_text": CALIB_TEXT},
    # rates across tensor kinds by each one's measured output distortion (quantize/allocate.py)
    "allocate": {"allocate": True, "calib_text": CALIB_TEXT},
    "feedback+fisher+allocate": {"feedback": True, "fisher": True, "allocate": True,
                                 "calib_text": CALIB_TEXT},
}
# the variants EmbeddingGemma gets too (uniform rates, as its target asks)
EMBED_VARIANTS = {"rounding", "feedback", "fisher", "feedback+fisher", "allocate",
                  "feedback+fisher+allocate"}
REF_TYPE = "IQ4_XS"  # issue 16: at REF_BYTES x its bytes, ggzip's KLD no worse than its
REF_BYTES = 0.75
SNR_CAP = 99.0       # a tensor coded without loss
# A llama.cpp type applied to a model dequantized from a llama.cpp file may
# re-create the source's grid.  A point is "flattered" (shown, left out of the
# comparisons) when REGRID_SHARE of all 2-D weights are re-coded without loss, or
# REGRID_LOW_SHARE of the weights it codes below 8 bits reach REGRID_DB (far above
# what such a type reaches from float weights; Q8_0 from float: ~45 dB)
REGRID_SHARE = 0.9
REGRID_LOW_SHARE = 0.5
REGRID_DB = 60.0
HIGH_TYPES = ("Q8_0", "Q8_1", "F16", "BF16", "F32")
# split allocation for an encoder: the token embedding at a share of the target
# rate, the share picked among these at SELECT_RATE by the embedding cosine on the
# calibration text's sentences (never the evaluation text); 1 = uniform rates
SHARES = (0.51, 0.64, 0.77, 0.9, 1.0)
SELECT_RATE = "3.9"
CTX = 512            # llama-perplexity / llama-imatrix context
# --per-tensor: EmbeddingGemma's tensors of these kinds in an early, a middle and a
# late layer; llama-quantize --pure types and ggzip rates; the issue's target
TENSOR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
TENSOR_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL", "Q4_0", "Q5_0",
                "Q8_0"]
TENSOR_RATES = ["2.5", "3", "3.5", "4", "5", "6", "7"]
TENSOR_MARGIN = 1.5  # dB above every --pure type at equal bits ...
TENSOR_RANGE = (3.0, 7.0)   # ... with bits in this range
# the files that determine a point: the cache is keyed by their hash
SOURCES = ("python/ggzip/quantize", "python/ggzip/convert", "python/ggzip/container",
           "python/ggzip/codec", "native/src", "native/include", "patches",
           "scripts/build_llama.sh", "scripts/bench_rd.py", "tests/data/declaration.txt",
           "scripts/data/alice-ch1-3.txt")
TIMES: dict = {}     # step -> seconds spent in this invocation


def timed_step(what: str, t0: float) -> None:
    dt = time.perf_counter() - t0
    TIMES[what] = TIMES.get(what, 0.0) + dt
    print(f"    {what}: {dt:.0f} s", flush=True)


def fetch_path(name: str) -> Path:
    from ggzip.fetch import fetch
    return Path(fetch(name))


def gguf_of(name: str) -> Path:
    """The fetched model's GGUF file."""
    p = fetch_path(name)
    return next(iter(sorted(p.rglob("*.gguf")))) if p.is_dir() else p


def tool(name: str) -> Path:
    exe = _find_llama_tool(name)
    if exe is None:
        sys.exit(f"bench_rd: {name} not found: build llama.cpp first (scripts/setup.sh)")
    return exe


class Refused(Exception):
    """A llama.cpp tool declined a point (a type it will not make, say)."""


def run(cmd: list, what: str, refusable: bool = False) -> str:
    """Run a llama.cpp tool; its stdout+stderr, or exit naming the failure
    (refusable: raise Refused with the output's last lines instead)."""
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).strip().splitlines()
        if refusable:
            why = [ln.strip() for ln in lines if re.search(r"error|fail|requires|need|must",
                                                           ln, re.I)]
            raise Refused(f"{what} exit {r.returncode}: " + (why[-1] if why else
                                                             (lines[-1] if lines else "")))
        tail = "\n".join(lines[-15:])
        sys.exit(f"bench_rd: {what} failed ({r.returncode}):\n  {shlex.join(map(str, cmd))}\n"
                 f"{tail}")
    timed_step(what, t0)
    return r.stdout + "\n" + r.stderr


def atomic(path: Path, make) -> Path:
    """make(tmp) writes the file; it appears at path only when complete."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)
    make(tmp)
    os.replace(tmp, path)
    return path


def convert_keywords() -> tuple[set, bool]:
    """The keyword arguments convert() accepts (those of convert.convert._convert,
    which convert() hands **kw to), and whether it takes any (a **kw of its own)."""
    mod = importlib.import_module("ggzip.convert.convert")
    fn = inspect.unwrap(getattr(mod, "_convert", None) or convert)
    ps = inspect.signature(fn).parameters.values()
    return ({p.name for p in ps if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)},
            any(p.kind == p.VAR_KEYWORD for p in ps))


def usable_variants(names: list[str]) -> tuple[list[str], list[str]]:
    """(the variants convert() accepts now, a note per variant skipped)."""
    known, any_kw = convert_keywords()
    ok, notes = [], []
    for v in names:
        if v not in VARIANTS:
            sys.exit(f"bench_rd: unknown variant {v} (known: {', '.join(VARIANTS)})")
        missing = sorted(set(VARIANTS[v]) - known)
        if missing and not any_kw:
            notes.append(f"variant {v} skipped: convert() does not accept "
                         f"{', '.join(missing)}")
            print(f"bench_rd: {notes[-1]}", flush=True)
        else:
            ok.append(v)
    return ok, notes


def variant_text(v: str) -> str:
    return ", ".join(f"{k}={Path(x).name if isinstance(x, Path) else x}"
                     for k, x in VARIANTS[v].items())


# ---- F32 GGUFs ------------------------------------------------------------------

# HF Gemma-3 layer names -> llama.cpp GGUF names (convert_hf_to_gguf.py's mapping)
_GEMMA_MAP = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def write_embeddinggemma_f32(folder: Path, tokenizer_gguf: Path, out: Path) -> None:
    """EmbeddingGemma's safetensors folder -> F32 GGUF that llama.cpp loads."""
    cfg = json.loads((folder / "config.json").read_text())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    arch = "gemma-embedding"
    w = gguf.GGUFWriter(out, arch)
    w.add_name("EmbeddingGemma-300M")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_uint32(f"{arch}.attention.sliding_window", cfg["sliding_window"])
    w.add_float32(f"{arch}.rope.freq_base_swa", cfg["rope_local_base_freq"])
    pool = json.loads((folder / "1_Pooling" / "config.json").read_text())
    if not pool.get("pooling_mode_mean_tokens"):
        sys.exit(f"{folder}: expected mean pooling")
    w.add_pooling_type(gguf.PoolingType.MEAN)
    dense = {}
    for sub, name in (("2_Dense", "dense_2"), ("3_Dense", "dense_3")):
        dc = json.loads((folder / sub / "config.json").read_text())
        w.add_uint32(f"{arch}.{name}_feat_in", dc["in_features"])
        w.add_uint32(f"{arch}.{name}_feat_out", dc["out_features"])
        dense[f"{name}.weight"] = SafeTensors(folder / sub / "model.safetensors").get(
            "linear.weight")
    # the vocabulary: Gemma 3's, as the Gemma-3-270M GGUF carries it
    r = gguf.GGUFReader(tokenizer_gguf)
    for k, f in r.fields.items():
        if not k.startswith("tokenizer.") or k == "tokenizer.ggml.add_eos_token":
            continue
        typ = f.types[0]
        w.add_key_value(k, f.contents(), typ,
                        sub_type=f.types[-1] if typ == gguf.GGUFValueType.ARRAY else None)
    w.add_add_eos_token(bool(tok_cfg.get("add_eos_token", False)))
    st = SafeTensors(folder / "model.safetensors")
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    for n in st.names():
        a = st.get(n)
        base = n[len("model."):] if n.startswith("model.") else n
        if base == "embed_tokens.weight":
            if a.shape[0] != n_vocab:
                sys.exit(f"{folder}: {a.shape[0]} embeddings for {n_vocab} tokens")
            g = "token_embd.weight"
        elif base == "norm.weight":
            g, a = "output_norm.weight", a + 1       # llama.cpp stores Gemma's 1 + w
        else:
            _, il, rest = base.split(".", 2)
            key = rest[:-len(".weight")]
            g = f"blk.{il}.{_GEMMA_MAP[key]}.weight"
            if key.endswith("norm"):
                a = a + 1
        w.add_tensor(g, np.ascontiguousarray(a, np.float32))
    for g, a in dense.items():
        w.add_tensor(g, np.ascontiguousarray(a, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_dequantized_f32(src: Path, out: Path) -> None:
    """A quantized GGUF -> F32 GGUF of the same model (gguf-py's dequantizers).
    Not `ggzip convert --keep-float`: its ggzip.convert.* keys make a second
    convert of the file fail ("metadata key given twice")."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k in ("general.architecture", "general.file_type",
                                          "general.quantization_version"):
            continue
        typ = f.types[0]
        w.add_key_value(k, f.contents(), typ,
                        sub_type=f.types[-1] if typ == gguf.GGUFValueType.ARRAY else None)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        w.add_tensor(t.name, a.reshape(tuple(int(x) for x in reversed(t.shape)))
                     .astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- rate and weight SNR -------------------------------------------------------

def plain_for_llama(path: Path) -> Path:
    """A GGUF stock llama.cpp loads: path itself, or its decompressed twin."""
    try:
        from ggzip.container import decompress_file, is_ggzip
    except ImportError:
        return path
    if not is_ggzip(path):
        return path
    plain = path.with_name(path.stem + ".plain.gguf")
    t0 = time.perf_counter()
    atomic(plain, lambda t: decompress_file(path, t, progress=False))
    timed_step("ggzip decompress (for the SNR)", t0)
    return plain


class Weights:
    """A GGUF file's tensors as float32 from a mmap, through the project's header
    parser: gguf-py's GGUFReader (GGUFModel) takes 20-50 s here to open a file with
    Gemma's 262k-token vocabulary, which each point's rate and SNR used to pay
    three times."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.path = path
        self.header = parse_header(self.mm, str(path))
        self.infos = {t.name: t for t in self.header.tensors}

    def raw(self, name: str) -> np.ndarray:
        t = self.infos[name]
        at = self.header.data_start + t.offset
        return np.frombuffer(self.mm, np.uint8, t.nbytes, at)

    def n_elements(self, name: str) -> int:
        return int(np.prod(self.infos[name].ne))

    def float32(self, name: str) -> np.ndarray:
        t = self.infos[name]
        shape = tuple(int(x) for x in reversed(t.ne))
        ty = gguf.GGMLQuantizationType(t.ggml_type)
        raw = self.raw(name)
        if ty == gguf.GGMLQuantizationType.F32:
            a = raw.view(np.float32)
        elif ty == gguf.GGMLQuantizationType.F16:
            a = raw.view(np.float16).astype(np.float32)
        else:
            a = gguf.quants.dequantize(raw.reshape(-1, raw.nbytes // max(1, self.n_elements(name) // shape[-1])), ty)
        return a.reshape(shape)


def file_rate(path: Path, ggzip_file: bool = False) -> dict:
    """Bits per value of all tensor data (see the module docstring); ggzip_file:
    a plain Q8_0 GGUF of convert, whose Q8_0 tensors count as their rANS frames."""
    try:
        from ggzip.container import GGZipReader, is_ggzip
        if is_ggzip(path):
            with GGZipReader(path) as r:
                ts = list(r.tensors.values())
                return {"bpw": 8 * sum(t.stored for t in ts) / sum(t.n_elements for t in ts),
                        "rate_from": "ggzip GGUF"}
    except ImportError:
        pass
    import ggzip.codec as codec
    w = Weights(path)
    bits = n = 0
    coded = False
    for name, t in w.infos.items():
        n += w.n_elements(name)
        if ggzip_file and t.ggml_type == gguf.GGMLQuantizationType.Q8_0:
            bits += 8 * len(codec.encode(w.raw(name), layout="q8_0", row_size=int(t.ne[0]) // 32 * 34))
            coded = True
        else:
            bits += 8 * t.nbytes
    return {"bpw": bits / n, "rate_from": "rANS frames" if coded else "tensor bytes"}


def sum_sq(x: np.ndarray) -> float:
    """sum of squares in float64, by chunks (no float64 copy of a large tensor)."""
    x = x.reshape(-1)
    total = 0.0
    for i in range(0, x.size, 1 << 20):
        c = x[i:i + (1 << 20)].astype(np.float64)
        total += float(np.dot(c, c))
    return total


_SIGNAL: dict = {}    # (file, tensor) -> |W|^2 of the reference


def plan_mismatch(ref, get_vector, names, plan) -> list[str]:
    """The 1-D tensors (norms) among names whose stored values differ from the
    reference's under the rescaling plan (None: none): a plan rebuilt here that is
    not the converter's shows there, and the SNR would not be in W's coordinates."""
    bad = []
    for name in names:
        if name not in ref.tensors or len(ref.shape(name)) != 1:
            continue
        want = ref.float32(name)
        if plan is not None:
            want = plan.apply(name, want)
        got = get_vector(name)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-6):
            bad.append(name)
    return bad


def undo_plan(name: str, d: np.ndarray, plan) -> np.ndarray:
    """W' = W diag(cols) / rows  ->  W = W' rows / diag(cols)."""
    if plan is None:
        return d
    if name in plan.divide:
        d = d * plan.divide[name].astype(np.float32)[:, None]
    if name in plan.cols:
        d = d / plan.cols[name].astype(np.float32)[None, :]
    return d


def weight_snr(ref: GGUFModel, path: Path, plan=None) -> dict:
    """Size-weighted mean over the 2-D weights of each tensor's SNR in dB (a tensor
    coded without loss counts SNR_CAP), the share of weights in such tensors, and
    per tensor [name, values, type, SNR]; plan: ggzip's rescaling, undone first
    (checked on the norms: plan_ok)."""
    q = Weights(path)
    vec = (lambda n: q.float32(n).reshape(-1))
    bad = plan_mismatch(ref, vec, [n for n in q.infos], plan)
    snrs, sizes, per = [], [], []
    for name in ref.tensors:
        shp = ref.shape(name)
        if not _quantizable(name, shp):
            continue
        w = ref.float32(name)
        d = undo_plan(name, q.float32(name), plan)
        sig = _SIGNAL.setdefault((ref.path, name), sum_sq(w))
        err = sum_sq(w - d)
        snr = SNR_CAP if err <= sig * 10 ** (-SNR_CAP / 10) else float(10 * np.log10(sig / err))
        snrs.append(snr)
        sizes.append(w.size)
        per.append([name, int(w.size), gguf.GGMLQuantizationType(q.infos[name].ggml_type).name,
                    round(snr, 3)])
    lossless = sum(n for d, n in zip(snrs, sizes) if d >= SNR_CAP) / sum(sizes)
    return {"snr": float(np.average(snrs, weights=sizes)), "lossless": lossless,
            "tensors": per, "plan_ok": not bad,
            **({"plan_bad": bad[:5]} if bad else {})}


# ---- llama.cpp quality measures --------------------------------------------------

def sentences(text: str, n: int) -> list[str]:
    """The first n sentences of at least 4 words, paragraph by paragraph (headings,
    all in capitals, skipped)."""
    out = []
    for para in re.split(r"\n\s*\n", text.replace("*", " ")):
        flat = re.sub(r"\s+", " ", para).strip()
        if not flat or flat.upper() == flat:
            continue
        out += [s.strip(" '\"") for s in re.split(r"(?<=[.!?])['\"]?\s+", flat)]
    return [s for s in out if len(s.split()) >= 4][:n]


def embeddings(model: Path, sent_file: Path, threads: int) -> np.ndarray:
    out = run([tool("llama-embedding"), "-m", model, "-f", sent_file, "-t", threads,
               "--embd-output-format", "raw", "--embd-normalize", "2", "-c", "2048",
               "-b", "2048", "-ub", "2048", "--no-warmup"], "llama-embedding")
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 64:
            try:
                rows.append(np.array([float(x) for x in parts], np.float32))
            except ValueError:
                continue
    return np.stack(rows)


def perplexity(model: Path, base: Path, args) -> dict:
    out = run([tool("llama-perplexity"), "-m", model, "--kl-divergence-base", base,
               "--kl-divergence", "-c", CTX, "-b", CTX, "--chunks", args.chunks,
               "-t", args.threads], "llama-perplexity --kl-divergence")

    def grab(pat):
        return llama_stat(out, pat, "bench_rd")
    return {"ppl": grab(r"Mean PPL\(Q\)\s*"), "kld": grab(r"Mean\s+KLD:"),
            "top1": grab(r"Same top p:") / 100}



# ---- one model -----------------------------------------------------------------

class Bench:
    def __init__(self, name: str, args):
        self.name, self.args = name, args
        self.dir = args.run_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.computed = self.reused = 0
        self.embedding = name == "embeddinggemma-300m"
        self.kquants = args.kquants if args.kquants is not None else (
            EMBED_KQUANTS if self.embedding else CAUSAL_KQUANTS + EXTRA_KQUANTS.get(name, []))
        self.rates = args.rates if args.rates is not None else (
            EMBED_RATES if self.embedding else CAUSAL_RATES)
        self.variants = [v for v in args.variant_names if not self.embedding or v in EMBED_VARIANTS]
        self.plans = {}
        self.share, self.share_cos = 1.0, {}

    def inputs(self):
        """The F32 GGUF and the imatrix."""
        if hasattr(self, "f32"):
            return
        a = self.args
        f32 = self.dir / "f32.gguf"
        if self.embedding:
            g3 = gguf_of("gemma3-270m")
            folder = fetch_path("embeddinggemma-300m")
            if (folder / "model_download").is_dir():
                folder = folder / "model_download"
            self.label = "EmbeddingGemma-300M (true F32)"
            make_f32 = lambda t: write_embeddinggemma_f32(folder, g3, t)  # noqa: E731
        else:
            src = gguf_of(self.name)
            w = Weights(src)
            types = sorted({gguf.GGMLQuantizationType(t.ggml_type).name
                            for t in w.infos.values() if len(t.ne) == 2})
            self.label = f"{CAUSAL[self.name]} (dequantized from {'/'.join(types)})"
            make_f32 = lambda t: write_dequantized_f32(src, t)  # noqa: E731
        t0 = time.perf_counter()
        if not f32.exists():
            atomic(f32, make_f32)
            timed_step("F32 GGUF", t0)
        self.f32 = f32
        self.imatrix = atomic(self.dir / "imatrix.gguf", lambda t: run(
            [tool("llama-imatrix"), "-m", f32, "-f", CALIB_TEXT, "-o", t, "-c", CTX,
             "-b", CTX, "-t", a.threads, "--no-ppl"] +
            # llama-imatrix asserts that no EOS is appended (EmbeddingGemma appends one)
            (["--override-kv", "tokenizer.ggml.add_eos_token=bool:false"]
             if self.embedding else []), "llama-imatrix"))
        self.ref = GGUFModel(f32)

    def prepare(self):
        a = self.args
        self.inputs()
        f32 = self.f32
        if not self.embedding:
            # the F32 model's logits on the evaluation text, for --kl-divergence
            self.kld_base = self.dir / f"kld-base-{a.chunks}.bin"

            def base(t):
                out = run([tool("llama-perplexity"), "-m", f32, "-f", EVAL_TEXT, "-c", CTX,
                           "-b", CTX, "--chunks", a.chunks, "-t", a.threads,
                           "--kl-divergence-base", t], "llama-perplexity (F32 logits)")
                m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
                (self.dir / f"f32-ppl-{a.chunks}.json").write_text(
                    json.dumps({"ppl": float(m.group(1))}))
            atomic(self.kld_base, base)
        else:
            sents = sentences(EVAL_TEXT.read_text(), a.sentences)
            self.sent_file = self.dir / f"sentences-{len(sents)}.txt"
            atomic(self.sent_file, lambda t: t.write_text("\n".join(sents) + "\n"))
            ref = self.dir / f"f32.emb{len(sents)}.npy"
            if not ref.exists():
                e = embeddings(f32, self.sent_file, a.threads)
                if len(e) != len(sents):
                    sys.exit(f"bench_rd: {len(e)} embeddings for {len(sents)} sentences")
                np.save(ref, e)
            self.ref_emb = np.load(ref)

    def points(self):
        a = self.args
        pts = [("gz", r, True) for r in self.rates]
        if not self.embedding or a.plain:
            pts += [("gz", r, False) for r in self.rates]
        for v in self.variants:
            pts += [(f"gz+{v}", r, True) for r in self.rates]
        if self.embedding and self.share != 1.0:
            # the token embedding of an encoder is an input lookup (no output head):
            # a lower rate there buys a higher one for the matrices at equal size
            pts += [("gzs", r, True) for r in self.rates]
        pts += [("kq", q, False) for q in self.kquants]
        pts += [("kq", q, True) for q in self.kquants if q != "Q8_0"]
        return pts

    def key(self, kind, q, imat, share=None) -> str:
        if kind == "gzs":
            kind = f"gzs{self.share if share is None else share:g}"
        return f"{kind}-{q}{'-imat' if imat else ''}"

    def make(self, kind, q, imat, share=None) -> Path:
        out = self.dir / f"{self.key(kind, q, imat, share)}.gguf"
        if kind == "kq":
            atomic(out, lambda t: run([tool("llama-quantize")] +
                                      (["--imatrix", self.imatrix] if imat else []) +
                                      [self.f32, t, q, self.args.threads],
                                      f"llama-quantize {q}", refusable=True))
        else:
            # gz: uniform rates (convert's default split for an encoder turned off)
            sh = (self.share if share is None else share) if kind == "gzs" else 1.0
            extra = VARIANTS[kind.split("+", 1)[1]] if "+" in kind else {}

            def mk(t):
                t0 = time.perf_counter()
                kw = {"alpha": None, **extra}   # None: the converter's default
                convert(self.f32, t, target_bpw=float(q), imatrix=self.imatrix if imat else None,
                        progress=False, embd_share=sh, threads=self.args.threads, **kw)
                timed_step("ggzip convert", t0)
            atomic(out, mk)
        return out

    def embd_rate(self, q: float) -> float:
        """The token embedding's rate in convert's split at q (split_rates)."""
        shapes = {n: self.ref.shape(n) for n in self.ref.tensors}
        return split_rates(shapes, q, self.share)[1].get(EMBD_NAME, q)

    def plan(self, value):
        """ggzip's rescaling of a file, from its metadata (value(key, default)):
        rebuilt from its alpha, with the imatrix when the file says it used it,
        else the weight-only proxy; None without rescaling."""
        return rebuild_plan(self.ref, self.imatrix, value, self.plans)

    def select_share(self) -> None:
        """Pick the token embedding's share (SHARES) at SELECT_RATE by the mean cosine
        to F32 over the calibration text's sentences, held out from the evaluation."""
        a = self.args
        sents = sentences(CALIB_TEXT.read_text(), 10**6)
        sent_file = atomic(self.dir / f"calib-sentences-{len(sents)}.txt",
                           lambda t: t.write_text("\n".join(sents) + "\n"))
        ref_file = self.dir / f"f32.calib{len(sents)}.npy"
        if not ref_file.exists():
            np.save(ref_file, embeddings(self.f32, sent_file, a.threads))
        ref = np.load(ref_file)
        cache = self.dir / f"share-select-{SELECT_RATE}-{len(sents)}.json"
        cos = json.loads(cache.read_text()) if cache.exists() else {}
        made = []
        for share in a.shares:
            if f"{share:g}" in cos:
                continue
            path = self.make("gz", SELECT_RATE, True) if share == 1.0 else \
                self.make("gzs", SELECT_RATE, True, share)
            made.append((share, path))
            llama_in = plain_for_llama(path)
            e = embeddings(llama_in, sent_file, a.threads)
            if llama_in != path:
                llama_in.unlink()
            c = np.sum(e * ref, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
            cos[f"{share:g}"] = float(c.mean())
            cache.write_text(json.dumps(cos, indent=1))
        self.share = max(a.shares, key=lambda sh: cos[f"{sh:g}"])
        self.share_cos, self.n_calib = cos, len(sents)
        for share, path in made:       # the curves measured later reuse only these two
            if share not in (1.0, self.share) and not a.keep_gguf:
                path.unlink(missing_ok=True)
        print(f"  token_embd share at {SELECT_RATE} bpw, calibration cosine: " +
              ", ".join(f"{k} {v:.5f}" for k, v in cos.items()) + f" -> {self.share:g}", flush=True)

    def share_note(self) -> str:
        return (f"token_embd at {self.share:g}x, the share picked at {SELECT_RATE} bpw by the mean cosine "
                f"on the calibration text's {self.n_calib} sentences (held out from the evaluation) among " +
                ", ".join(f"{k} ({v:.4f})" for k, v in self.share_cos.items()))

    def method(self, kind, q, imat) -> str:
        if kind == "kq":
            name = q
        elif kind == "gzs":
            name = f"ggzip {q}, token_embd at {self.embd_rate(float(q)):.2f}"
        else:
            name = kind.replace("gz", "ggzip", 1) + f" {q}"
        return name + (" + imatrix" if imat and not (kind == "kq" and q == "Q8_0") else "")

    def measure(self, kind, q, imat) -> dict:
        a = self.args
        key = self.key(kind, q, imat)
        cache = self.dir / f"{key}.json"
        want = {"chunks": a.chunks} if not self.embedding else \
            {"sentences": len(self.ref_emb)}
        if cache.exists():        # this revision's and parameters' (the folder says so)
            res = json.loads(cache.read_text())
            if all(res.get(k) == v for k, v in want.items()):
                self.reused += 1
                return res
        print(f"  {key}", flush=True)
        self.computed += 1
        res = {"key": key, "kind": kind + ("-imat" if imat else ""), **want,
               "method": self.method(kind, q, imat), "qtype": q if kind == "kq" else None}
        try:
            path = self.make(kind, q, imat)
        except Refused as e:
            res["refused"] = str(e)
            print(f"    refused: {e}", flush=True)
            cache.write_text(json.dumps(res, indent=1))
            return res
        res.update(file_rate(path, ggzip_file=kind != "kq"))
        llama_in = plain_for_llama(path)
        t0 = time.perf_counter()
        res.update(weight_snr(self.ref, llama_in, self.plan(Weights(llama_in).header.value)
                              if kind != "kq" else None))
        if not res["plan_ok"]:
            print(f"    warning: the rescaling rebuilt here differs from the file's on "
                  f"{', '.join(res['plan_bad'])}: its SNR is not in W's coordinates", flush=True)
        timed_step("weight SNR", t0)
        if self.embedding:
            e = embeddings(llama_in, self.sent_file, a.threads)
            cos = np.sum(e * self.ref_emb, 1) / (np.linalg.norm(e, axis=1) *
                                                  np.linalg.norm(self.ref_emb, axis=1))
            res.update(cos_mean=float(cos.mean()), cos_min=float(cos.min()))
        else:
            res.update(perplexity(llama_in, self.kld_base, a))
        if llama_in != path:
            llama_in.unlink()
        tmp = cache.with_name(cache.name + ".part")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, cache)
        if not a.keep_gguf:
            path.unlink(missing_ok=True)
        return res

    def f32_point(self) -> dict:
        r = {"key": "f32", "kind": "f32", "method": "F32 (reference)", **file_rate(self.f32),
             "snr": SNR_CAP, "lossless": 1.0}
        if self.embedding:
            r.update(cos_mean=1.0, cos_min=1.0)
        else:
            ppl = json.loads((self.dir / f"f32-ppl-{self.args.chunks}.json").read_text())
            r.update(ppl, kld=0.0, top1=1.0)
        return r

    def run(self) -> list[dict]:
        print(f"\n{self.name}", flush=True)
        self.prepare()
        if self.embedding:
            self.select_share()
        res = [self.f32_point()]
        for p in self.points():
            res.append(self.measure(*p))
            r = res[-1]
            if "refused" in r:
                print(f"  {r['method']:24s} refused: {r['refused']}", flush=True)
                continue
            q = (f"cos {r['cos_mean']:.5f} (min {r['cos_min']:.4f})" if self.embedding else
                 f"KLD {r['kld']:.4f} top-1 {r['top1']:.3f} PPL {r['ppl']:.2f}")
            print(f"  {r['method']:24s} {r['bpw']:.3f} bpw  {r['snr']:.2f} dB  {q}", flush=True)
        return res


def rebuild_plan(ref: GGUFModel, imatrix: Path, value, cache: dict):
    """See Bench.plan; cache: (alpha, statistics) -> plan."""
    alpha = float(value(KEY_ALPHA, 0.0))
    if alpha == 0:
        return None
    stats = str(value(KEY_STATS, ""))
    # the statistics the file was made with: the imatrix, or convert's data-free
    # ones (seeded random tokens: the same again), or the weight-only proxy
    free = re.search(r"^data-free: .* on (\d+) random tokens", stats)
    key = (alpha, "imatrix" if stats.startswith("imatrix") else free.group(1) if free else None)
    if key not in cache:
        shapes = {n: ref.shape(n) for n in ref.tensors}
        st = load_imatrix(imatrix) if key[1] == "imatrix" else \
            _stats_from_random(ref, int(key[1]), False, None).stats if free else None
        cache[key] = plan_rescale(ref.arch, shapes, ref.kv, ref.float32, st, alpha)
    return cache[key]



# ---- verdict and report --------------------------------------------------------

def valid(p) -> bool:
    return "refused" not in p


def quality(p, embedding):
    """Higher is better: cosine, or -log KLD."""
    return p["cos_mean"] if embedding else -np.log(max(p["kld"], 1e-9))


def interp(curve, x, key):
    xs = np.array([p["bpw"] for p in curve])
    return float(np.interp(x, xs, [key(p) for p in curve]))


def regrid_share(p) -> float:
    """Share of the 2-D weights a point codes below 8 bits that it re-codes at
    REGRID_DB or more (the source's grid re-created)."""
    low = [t for t in p.get("tensors", []) if t[2] not in HIGH_TYPES]
    n = sum(t[1] for t in low)
    return sum(t[1] for t in low if t[3] >= REGRID_DB) / n if n else 0.0


def flattered(p) -> bool:
    """A llama.cpp point that partly re-creates the dequantized source (see REGRID_*)."""
    return p["kind"].startswith("kq") and valid(p) and (
        p.get("lossless", 0) >= REGRID_SHARE or regrid_share(p) >= REGRID_LOW_SHARE)


def flatter_note(p) -> str:
    return (f"{p.get('lossless', 0):.0%} of weights re-coded without loss, "
            f"{regrid_share(p):.0%} of those below 8 bits at >= {REGRID_DB:g} dB")


def type_mix(p) -> str:
    """The tensor types of a point's 2-D weights, by share of values."""
    mix: dict = {}
    for _, n, ty, _ in p.get("tensors", []):
        mix[ty] = mix.get(ty, 0) + n
    total = sum(mix.values()) or 1
    return ", ".join(f"{ty} {n / total:.0%}" for ty, n in
                     sorted(mix.items(), key=lambda kv: -kv[1]) if n / total >= 0.005)


def curve_of(res, kind) -> list[dict]:
    return sorted([p for p in res if p["kind"] == kind and valid(p)], key=lambda p: p["bpw"])


def curve_label(kind: str) -> str:
    if kind == "gz":
        return "ggzip, no imatrix (data-free statistics)"
    if kind == "gz-imat":
        return "ggzip + imatrix"
    if kind == "gzs-imat":
        return "ggzip + imatrix, split rates"
    return kind[:-len("-imat")].replace("gz", "ggzip", 1) + " + imatrix"


def causal_curves(res) -> list[str]:
    """The ggzip curves of a causal model: no statistics, imatrix, then variants."""
    kinds = [k for k in ("gz", "gz-imat") if curve_of(res, k)]
    return kinds + sorted({p["kind"] for p in res if p["kind"].startswith("gz+") and valid(p)})


def rate_at_kld(curve, kld):
    """(bits/weight where ggzip's curve reaches kld, None) or (None, why): log KLD
    linear in bits between neighbouring points; of several crossings the highest
    rate (from there on the measured curve stays below kld)."""
    if len(curve) < 2:
        return None, "too few points"
    xs = [p["bpw"] for p in curve]
    ys = [np.log(max(p["kld"], 1e-9)) for p in curve]
    y = np.log(max(kld, 1e-9))
    hits = []
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if min(y0, y1) <= y <= max(y0, y1):
            hits.append(x0 if y0 == y1 else x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    if hits:
        return max(hits), None
    return None, (f"out of range (< {xs[0]:.2f})" if y > max(ys) else
                  f"out of range (> {xs[-1]:.2f})")


def kld_at_rate(curve, x):
    """ggzip's KLD at x bits/weight (log KLD linear between neighbours), None outside."""
    if len(curve) < 2 or not curve[0]["bpw"] <= x <= curve[-1]["bpw"]:
        return None
    return float(np.exp(interp(curve, x, lambda p: np.log(max(p["kld"], 1e-9)))))


def kq_rows(res) -> list[dict]:
    """The llama.cpp points compared: measured, not flattered; without the imatrix
    first, each by rate."""
    return sorted([p for p in res if p["kind"].startswith("kq") and valid(p) and not flattered(p)],
                  key=lambda p: (p["kind"] == "kq-imat", p["bpw"]))


def paired_curves(p, curves) -> list[str]:
    """The ggzip curves a llama.cpp point is compared with: the same statistics."""
    if p["kind"] == "kq":
        return [c for c in curves if c == "gz"]
    return [c for c in curves if c != "gz"]


def equal_kld_table(res) -> list[str]:
    curves = causal_curves(res)
    imat_curves = [c for c in curves if c != "gz"]
    head = ("| llama.cpp type | tensor types | bits/weight | KLD | ggzip, same statistics: "
            "bits/weight at equal KLD | byte ratio |" +
            "".join(f" {curve_label(c)}: bits/weight (ratio) |" for c in imat_curves[1:]))
    rows = [head, "|" + "---|" * (6 + len(imat_curves[1:]))]
    for p in kq_rows(res):
        cells = []
        for c in ([("gz" if p["kind"] == "kq" else "gz-imat")] + imat_curves[1:]):
            if c not in paired_curves(p, curves):
                cells.append(None)
                continue
            x, why = rate_at_kld(curve_of(res, c), p["kld"])
            cells.append((x, why))

        def cell(v, both):
            if v is None:
                return ["-", "-"] if both else ["-"]
            x, why = v
            if x is None:
                return [why, "-"] if both else [why]
            return [f"{x:.2f}", f"{x / p['bpw']:.2f}x"] if both else \
                [f"{x:.2f} ({x / p['bpw']:.2f}x)"]
        out = cell(cells[0], True)
        for v in cells[1:]:
            out += cell(v, False)
        rows.append(f"| {p['method']} | {type_mix(p)} | {p['bpw']:.3f} | {p['kld']:.4f} | " +
                    " | ".join(out) + " |")
    return rows


def issue16_lines(res) -> list[str]:
    """At REF_BYTES x the bytes of REF_TYPE, ggzip's KLD no worse than REF_TYPE's:
    per ggzip curve, against REF_TYPE with the same statistics."""
    out = []
    for c in causal_curves(res):
        want = "kq" if c == "gz" else "kq-imat"
        ref = [p for p in res if p["kind"] == want and p.get("qtype") == REF_TYPE]
        head = (f"issue 16 target, {curve_label(c)} vs {REF_TYPE}"
                f"{' + imatrix' if want == 'kq-imat' else ''}: ")
        if not ref:
            out.append(head + f"{REF_TYPE} not measured: not checked")
            continue
        r = ref[0]
        if not valid(r):
            out.append(head + f"not checked ({r['refused']})")
            continue
        if flattered(r):
            out.append(head + f"not comparable ({REF_TYPE} is flattered: {flatter_note(r)})")
            continue
        curve = curve_of(res, c)
        x = REF_BYTES * r["bpw"]
        mine = kld_at_rate(curve, x)
        eq, why = rate_at_kld(curve, r["kld"])
        at_eq = (f"; ggzip reaches {r['kld']:.4f} at {eq:.2f} bits/weight = {eq / r['bpw']:.2f}x"
                 if eq is not None else f"; ggzip's rate at equal KLD: {why}")
        if mine is None:
            out.append(head + f"not checked: {REF_BYTES:g} x {r['bpw']:.3f} = {x:.2f} "
                       f"bits/weight outside ggzip's measured {curve[0]['bpw']:.2f}-"
                       f"{curve[-1]['bpw']:.2f}" + at_eq if curve else head + "no ggzip points")
            continue
        out.append(head + f"at {REF_BYTES:g}x the bytes ({REF_BYTES:g} x {r['bpw']:.3f} = "
                   f"{x:.2f} bits/weight) ggzip's KLD {mine:.4f} vs {REF_TYPE}'s {r['kld']:.4f}: " +
                   ("met" if mine <= r["kld"] else "NOT met") + at_eq)
    return out


def target1_lines(res, embedding, curve="gz-imat") -> list[str]:
    """The project's target 1 (at 3.9 bpw no worse than Q4_K_M) on one curve."""
    gz = curve_of(res, curve)
    qname = "embedding cosine" if embedding else "KL divergence"
    fmt = (lambda p: f"{p['cos_mean']:.5f}") if embedding else (lambda p: f"{p['kld']:.4f}")
    out = []
    for q4 in [p for p in res if p["kind"].startswith("kq") and valid(p)
               and p["method"].startswith("Q4_K_M")]:
        if len(gz) < 2 or not gz[0]["bpw"] <= 3.9 <= gz[-1]["bpw"]:
            out.append("target 1: ggzip's points do not bracket 3.9 bpw: not checked")
            break
        # ggzip's curve at exactly 3.9 bpw (its points at file level sit a little
        # above their target rates), interpolated in the quality measure
        at = interp(gz, 3.9, lambda g: quality(g, embedding))
        snr = interp(gz, 3.9, lambda g: g["snr"])
        shown = f"{at:.5f}" if embedding else f"{np.exp(-at):.4f}"
        if flattered(q4):
            out.append(f"target 1 vs {q4['method']}: not comparable here ({q4['method']} "
                       f"re-creates the dequantized source's own grid: {flatter_note(q4)}): "
                       f"ggzip at 3.9 bpw {qname} {shown} vs {fmt(q4)} at {q4['bpw']:.2f} bpw")
            continue
        ok = at >= quality(q4, embedding)
        out.append(f"target 1 (at 3.9 bpw no worse than Q4_K_M): {curve_label(curve)} at 3.9 bpw "
                   f"{qname} {shown} (weight SNR {snr:.2f} dB) vs {q4['method']} at "
                   f"{q4['bpw']:.2f} bpw {fmt(q4)} ({q4['snr']:.2f} dB): "
                   + ("met" if ok else "NOT met"))
    return out


def verdict(res, embedding, curve="gz-imat") -> list[str]:
    """The project's two targets, on one model's points; a ggzip curve (with the
    imatrix; `curve`: uniform rates "gz-imat", or the split "gzs-imat") against
    the llama.cpp points, each with and without the imatrix."""
    gz = curve_of(res, curve)
    kq = [p for p in res if p["kind"].startswith("kq") and valid(p)]
    if len(gz) < 2 or not kq:
        return ["too few points: targets not checked"]
    qname = "embedding cosine" if embedding else "KL divergence"
    fmt = (lambda p: f"{p['cos_mean']:.5f}") if embedding else (lambda p: f"{p['kld']:.4f}")
    out = target1_lines(res, embedding, curve)
    lo, hi = gz[0]["bpw"], gz[-1]["bpw"]
    inside = [p for p in kq if 4 <= p["bpw"] <= 7]
    if not inside:       # still compare the larger files with ggzip's best
        inside = [p for p in kq if p["bpw"] > 7]
        out.append("target 2: no llama.cpp file lies in 4-7 bpw (smallest "
                   f"{min(p['bpw'] for p in kq):.2f}): not checked; larger files compared: " +
                   "; ".join(_vs(p, gz, embedding, fmt)
                             for p in sorted(inside, key=lambda p: p["bpw"])))
        return out
    worse, lines = [], []
    for p in sorted(inside, key=lambda p: p["bpw"]):
        if flattered(p):
            lines.append(f"{p['method']} {p['bpw']:.2f} bpw not comparable (re-creates the "
                         f"source's grid, {flatter_note(p)}; {fmt(p)})")
            continue
        if p["bpw"] < lo:
            lines.append(f"{p['method']} at {p['bpw']:.2f} bpw below ggzip's measured range")
            worse.append(p["method"] + " (not measured)")
            continue
        if p["bpw"] > hi:
            # ggzip's rate saturates near one step per row at the no-clip floor; its
            # highest point has fewer bits, so if it is better the curve is above
            mine, how = quality(gz[-1], embedding), f" (ggzip's highest point, {hi:.2f} bpw)"
        else:
            mine, how = interp(gz, p["bpw"], lambda g: quality(g, embedding)), ""
        ok = mine > quality(p, embedding)
        shown = f"{mine:.5f}" if embedding else f"{np.exp(-mine):.4f}"
        lines.append(f"{p['method']} {p['bpw']:.2f} bpw: {fmt(p)} vs ggzip {shown}{how}")
        if not ok:
            worse.append(p["method"])
    out.append("target 2 (4-7 bpw: ggzip's curve above every llama.cpp point, " + qname +
               " interpolated at its rate): " +
               ("met" if not worse and inside else "NOT met (" + ", ".join(worse) + ")") +
               "; " + "; ".join(lines))
    return out


def verdicts(res, embedding, bench) -> list[str]:
    """EmbeddingGemma: the targets on ggzip's uniform-rate curve, and again on the
    split-rate curve where there is one (convert's default for an encoder).  A
    causal model: issue 16's target per ggzip curve, and target 1 per imatrix curve
    (target 2 is the equal-KLD table)."""
    if not embedding:
        return issue16_lines(res) + [v for c in causal_curves(res) if c != "gz"
                                     for v in target1_lines(res, False, c)]
    # --allocate moves bits between tensor kinds; the token embedding keeps the mean rate
    extra = [("--embd-share 1" if "allocate" in c else "uniform rates") +
             f", {c[:-len('-imat')].replace('gz+', '--').replace('+', ' --')}: " + v
             for c in sorted({p["kind"] for p in res if p["kind"].startswith("gz+") and valid(p)})
             for v in verdict(res, embedding, c)]
    if not any(p["kind"] == "gzs-imat" for p in res):
        return verdict(res, embedding) + extra
    return ["uniform rates (--embd-share 1): " + v for v in verdict(res, embedding)] + extra + \
        [f"split rates ({bench.share_note()}; convert's default for gemma-embedding: "
         f"{EMBD_SHARE_DEFAULT['gemma-embedding']:g}): " + v
         for v in verdict(res, embedding, "gzs-imat")]


def _vs(p, gz, embedding, fmt) -> str:
    best = gz[-1]
    tag = "not comparable, re-creates the source's grid; " if flattered(p) else ""
    return (f"{p['method']} {p['bpw']:.2f} bpw: {tag}{fmt(p)} vs ggzip {fmt(best)} at "
            f"{best['bpw']:.2f} bpw")


def table(res, embedding) -> list[str]:
    if embedding:
        head = ["| method | bits/weight | weight SNR (dB) | cosine to F32, mean | worst |",
                "|---|---|---|---|---|"]
    else:
        head = ["| method | tensor types | bits/weight | weight SNR (dB) | KLD vs F32 (nats) "
                "| top-1 = F32 | PPL |", "|---|---|---|---|---|---|---|"]
    rows = []
    for p in sorted([p for p in res if valid(p)], key=lambda p: p["bpw"]):
        snr = "-" if p["kind"] == "f32" else (
            f"{p['snr']:.2f}" if p.get("plan_ok", True) else "n/a (rescaling not rebuilt)") + \
            (f" ({p['lossless']:.0%} lossless)" if p.get("lossless", 0) >= 0.005 else "")
        if embedding:
            rows.append(f"| {p['method']} | {p['bpw']:.3f} | {snr} | {p['cos_mean']:.5f} | "
                        f"{p['cos_min']:.4f} |")
        else:
            name = p["method"] + (" **(flattered)**" if flattered(p) else "")
            types = type_mix(p) if p["kind"].startswith("kq") else \
                ("F32" if p["kind"] == "f32" else "Q8_0 (rANS)")
            rows.append(f"| {name} | {types} | {p['bpw']:.3f} | {snr} | {p['kld']:.4f} | "
                        f"{p['top1']:.3f} | {p['ppl']:.3f} |")
    for p in res:
        if not valid(p):
            rows.append(f"| {p['method']} | refused: {p['refused']} |" +
                        " - |" * (3 if embedding else 5))
    return head + rows


STYLE = {"f32": None, "kq": ("s", "C1", "llama.cpp"), "kq-imat": ("D", "C3", "llama.cpp + imatrix"),
         "gz": ("o--", "C0", "ggzip, no imatrix (data-free statistics)"),
         "gz-imat": ("o-", "C2", "ggzip + imatrix, uniform rates"),
         "gzs-imat": ("^-", "C4", "ggzip + imatrix, split rates (token_embd share {share:g})")}
VARIANT_COLORS = ("C5", "C6", "C8", "C9", "C7")
SNR_PLOT_MAX = 62.0    # the SNR panels stop here: points above re-code tensors without loss


def plot(results, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 9), squeeze=False)
    for col, (label, (res, embedding, bench)) in enumerate(results.items()):
        styles = dict(STYLE)
        for i, v in enumerate(sorted({p["kind"] for p in res if p["kind"].startswith("gz+")})):
            styles[v] = ("v-", VARIANT_COLORS[i % len(VARIANT_COLORS)], curve_label(v))
        for row, (key, ylab, log) in enumerate((
                (("cos_mean", "1 - cosine to F32 (mean)", True) if embedding else
                 ("kld", "KL divergence from F32 (nats)", True)),
                ("snr", "weight SNR (dB)" + ("" if embedding else
                                              f"; a tensor re-coded without loss counts {SNR_CAP:g}"),
                 False))):
            ax = axes[row][col]
            clipped = False
            for kind, st in styles.items():
                ps = curve_of(res, kind)
                if not ps or st is None:
                    continue
                ys = [(1 - p[key]) if key == "cos_mean" else p[key] for p in ps]
                xs = [p["bpw"] for p in ps]
                if kind.startswith("gz"):
                    ax.plot(xs, ys, st[0], color=st[1], label=st[2].format(share=bench.share))
                    for p, x, y in zip(ps, xs, ys):
                        ax.annotate(p["method"].split()[1].rstrip(","), (x, y), fontsize=6,
                                    color=st[1], xytext=(-4, -10), textcoords="offset points")
                else:
                    flat = [flattered(p) for p in ps]
                    if key == "snr" and not embedding:
                        clipped |= any(y > SNR_PLOT_MAX for y in ys)
                    for hollow in (False, True):
                        sel = [i for i, f in enumerate(flat) if f == hollow]
                        if not sel:
                            continue
                        ax.scatter([xs[i] for i in sel], [ys[i] for i in sel], marker=st[0],
                                   facecolors="none" if hollow else st[1], edgecolors=st[1],
                                   label=st[2] + (" (flattered)" if hollow else ""))
                    for p, x, y in zip(ps, xs, ys):
                        ax.annotate(p["method"].split()[0], (x, y), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points")
            if log:
                ax.set_yscale("log")
            if clipped:
                lo, _ = ax.get_ylim()
                ax.set_ylim(lo, SNR_PLOT_MAX)
                ax.text(0.02, 0.98, f"llama.cpp points above {SNR_PLOT_MAX:g} dB (tensors re-coded "
                        "without loss) are off the panel", transform=ax.transAxes, fontsize=7,
                        va="top")
            if embedding:
                ax.axvspan(4, 7, color="0.93", zorder=0, label="4-7 bpw (target 2)")
            ax.axvline(3.9, color="0.6", ls=":")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("bits per weight (whole file)")
            ax.set_ylabel(ylab + (" - lower is better" if log else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)



# ---- per tensor (EmbeddingGemma, true F32) ------------------------------------------

def dequantize_raw(raw: np.ndarray, ggml_type: int, shape: tuple) -> np.ndarray:
    ty = gguf.GGMLQuantizationType(ggml_type)
    if ty == gguf.GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(shape)
    return gguf.quants.dequantize(raw.reshape(shape[0], -1), ty).reshape(shape)


class TensorBench:
    """Imatrix-weighted SNR of single tensors against their own bits per weight:
    llama-quantize --pure --imatrix TYPE against ggzip convert --target-bpw B."""

    def __init__(self, args):
        self.args = args
        self.b = Bench("embeddinggemma-300m", args)
        self.b.inputs()
        self.dir = self.b.dir
        ref = self.b.ref
        n = int(ref.kv[f"{ref.arch}.block_count"])
        self.layers = (1, n // 2, n - 2)
        self.names = [f"blk.{il}.{k}.weight" for il in self.layers for k in TENSOR_KINDS]
        stats = load_imatrix(self.b.imatrix)
        self.cols = {}
        for name in self.names:
            if name not in ref.tensors or name not in stats:
                sys.exit(f"bench_rd --per-tensor: {name} missing from the model or its imatrix")
            self.cols[name] = np.asarray(stats[name], np.float64)
        self.W = Weights(self.b.f32)
        self.variants = list(args.variant_names)
        self.computed = self.reused = 0

    def snr(self, name: str, d: np.ndarray) -> tuple[float, float]:
        """(imatrix-weighted SNR, plain SNR) in dB of d against the F32 tensor."""
        w = self.W.float32(name).astype(np.float64)
        e = w - d.astype(np.float64)
        c = self.cols[name]
        sig_c, err_c = float((w * w).sum(0) @ c), float((e * e).sum(0) @ c)
        sig, err = float((w * w).sum()), float((e * e).sum())
        db = (lambda s, r: SNR_CAP if r <= s * 10 ** (-SNR_CAP / 10) else 10 * np.log10(s / r))
        return round(float(db(sig_c, err_c)), 3), round(float(db(sig, err)), 3)

    def point(self, key: str, method: str, make, ggzip: bool) -> dict:
        cache = self.dir / f"tensor-{key}.json"
        if cache.exists():
            self.reused += 1
            return json.loads(cache.read_text())
        print(f"  tensor-{key}", flush=True)
        self.computed += 1
        res = {"key": key, "method": method, "ggzip": ggzip}
        try:
            path = make()
        except Refused as e:
            res["refused"] = str(e)
            cache.write_text(json.dumps(res, indent=1))
            return res
        t0 = time.perf_counter()
        per = {}
        if ggzip:
            from ggzip.container import GGZipReader
            with GGZipReader(path) as r:
                plan = rebuild_plan(self.b.ref, self.b.imatrix, r.value, self.b.plans)
                bad = plan_mismatch(self.b.ref, lambda n: r.array(n).reshape(-1),
                                    list(r.tensors), plan)
                res["plan_ok"] = not bad
                for name in self.names:
                    t = r.tensors[name]
                    d = undo_plan(name, dequantize_raw(r.data(name), t.ggml_type, t.shape), plan)
                    per[name] = {"bits": 8 * t.stored / t.n_elements, "type": t.type_name,
                                 **dict(zip(("snr", "snr_plain"), self.snr(name, d)))}
        else:
            q = Weights(path)
            for name in self.names:
                t = q.infos[name]
                per[name] = {"bits": 8 * t.nbytes / q.n_elements(name),
                             "type": gguf.GGMLQuantizationType(t.ggml_type).name,
                             **dict(zip(("snr", "snr_plain"), self.snr(name, q.float32(name))))}
        res["tensors"] = per
        timed_step("per-tensor SNR", t0)
        tmp = cache.with_name(cache.name + ".part")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, cache)
        if not self.args.keep_gguf:
            path.unlink(missing_ok=True)
        return res

    def run(self) -> dict:
        print("\nembeddinggemma-300m, per tensor: " + ", ".join(self.names), flush=True)
        b, a = self.b, self.args
        out = {"kq": [], "curves": {}}
        for ty in a.tensor_types:
            out["kq"].append(self.point(
                f"pure-{ty}-imat", f"{ty} --pure" + (" + imatrix" if ty != "Q8_0" else ""),
                lambda ty=ty: atomic(self.dir / f"tensor-pure-{ty}-imat.gguf", lambda t: run(
                    [tool("llama-quantize"), "--pure", "--imatrix", b.imatrix, b.f32, t, ty,
                     a.threads], f"llama-quantize --pure {ty}", refusable=True)), False))
        for v in [None] + self.variants:
            kind = "gz" if v is None else f"gz+{v}"
            pts = []
            for rate in a.tensor_rates:
                def mk(rate=rate, v=v, kind=kind):
                    def conv(t):
                        t0 = time.perf_counter()
                        convert(b.f32, t, target_bpw=float(rate), imatrix=b.imatrix, progress=False,
                                embd_share=1.0, threads=a.threads,
                                **{"alpha": None, **(VARIANTS[v] if v else {})})
                        timed_step("ggzip convert", t0)
                    return atomic(self.dir / f"tensor-{kind}-{rate}-imat.gguf", conv)
                pts.append(self.point(f"{kind}-{rate}-imat",
                                      kind.replace("gz", "ggzip", 1) + f" {rate} + imatrix", mk,
                                      True))
            out["curves"][kind + "-imat"] = pts
        return out


def tensor_curve(pts, name) -> tuple[list, list]:
    xy = sorted((p["tensors"][name]["bits"], p["tensors"][name]["snr"]) for p in pts
                if "refused" not in p)
    return [x for x, _ in xy], [y for _, y in xy]


def tensor_margins(tb: TensorBench, res: dict, curve: str) -> list[dict]:
    """Per (llama.cpp type, tensor): its bits and SNR, ggzip's SNR interpolated at
    those bits on the tensor's own curve (None outside), and the margin."""
    out = []
    for p in res["kq"]:
        if "refused" in p:
            continue
        for name in tb.names:
            t = p["tensors"][name]
            xs, ys = tensor_curve(res["curves"][curve], name)
            g = float(np.interp(t["bits"], xs, ys)) if xs and xs[0] <= t["bits"] <= xs[-1] else None
            out.append({"type": p["key"].split("-")[1], "tensor": name, "kind": name.split(".")[2],
                        "layer": int(name.split(".")[1]), "bits": t["bits"], "ttype": t["type"],
                        "snr": t["snr"], "gz": g, "margin": None if g is None else g - t["snr"],
                        "range": (xs[0], xs[-1]) if xs else None})
    return out


def tensor_report(tb: TensorBench, res: dict) -> tuple[list[str], list[str], dict]:
    """The section's tables and verdict lines; the margins per curve (for the plot)."""
    lo, hi = TENSOR_RANGE
    curves = list(res["curves"])
    margins = {c: tensor_margins(tb, res, c) for c in curves}
    lines = []
    # ggzip's points on these tensors
    lines += ["| ggzip point | bits/weight of these tensors: mean (min-max) | "
              "imatrix-weighted SNR, mean (dB) | unweighted SNR, mean (dB) |", "|---|---|---|---|"]
    for c in curves:
        for p in res["curves"][c]:
            ts = list(p["tensors"].values())
            bits = [t["bits"] for t in ts]
            lines.append(f"| {p['method']}{'' if p.get('plan_ok', True) else ' (rescaling not rebuilt)'} "
                         f"| {np.mean(bits):.2f} ({min(bits):.2f}-{max(bits):.2f}) | "
                         f"{np.mean([t['snr'] for t in ts]):.2f} | "
                         f"{np.mean([t['snr_plain'] for t in ts]):.2f} |")
    lines.append("")
    # per type, pooled over the tensors
    extra = curves[1:]
    lines += ["| llama.cpp `--pure` type | tensor types | bits/weight | llama.cpp SNR, mean (dB) "
              "| ggzip + imatrix at equal bits, mean | margin, mean (dB) | margin, min (tensor) |" +
              "".join(f" {curve_label(c)}: margin mean / min |" for c in extra),
              "|" + "---|" * (7 + len(extra))]
    for p in res["kq"]:
        ty = p["key"].split("-")[1]
        if "refused" in p:
            lines.append(f"| {ty} | refused: {p['refused']} |" + " - |" * (5 + len(extra)))
            continue
        ms = [m for m in margins[curves[0]] if m["type"] == ty]
        types = sorted({m["ttype"] for m in ms})
        bits = sorted({round(m["bits"], 3) for m in ms})
        inr = [m for m in ms if m["margin"] is not None]
        out_n = len(ms) - len(inr)

        def mm(lst):
            if not lst:
                return "out of range", "out of range"
            worst = min(lst, key=lambda m: m["margin"])
            return (f"{np.mean([m['margin'] for m in lst]):+.2f}",
                    f"{worst['margin']:+.2f} ({worst['kind']} {worst['layer']})")
        mean_s, min_s = mm(inr)
        row = (f"| {ty} | {', '.join(types)} | " +
               (f"{bits[0]:.3f}" if len(bits) == 1 else f"{bits[0]:.3f}-{bits[-1]:.3f}") +
               f" | {np.mean([m['snr'] for m in ms]):.2f} | " +
               (f"{np.mean([m['gz'] for m in inr]):.2f}" if inr else "-") +
               f"{f' ({out_n} out of range)' if out_n else ''} | {mean_s} | {min_s} |")
        for c in extra:
            a, b_ = mm([m for m in margins[c] if m["type"] == ty and m["margin"] is not None])
            row += f" {a} / {b_} |"
        lines.append(row)
    lines.append("")
    # per kind x type, the main curve
    kq_types = [p["key"].split("-")[1] for p in sorted(
        [p for p in res["kq"] if "refused" not in p],
        key=lambda p: np.mean([t["bits"] for t in p["tensors"].values()]))]
    lines += [f"Margin of {curve_label(curves[0])} per tensor kind (dB, mean over layers "
              f"{', '.join(map(str, tb.layers))}, and the smallest):", "",
              "| kind | " + " | ".join(kq_types) + " |", "|---|" + "---|" * len(kq_types)]
    for kind in TENSOR_KINDS:
        cells = []
        for ty in kq_types:
            ms = [m for m in margins[curves[0]] if m["type"] == ty and m["kind"] == kind]
            inr = [m["margin"] for m in ms if m["margin"] is not None]
            fb = sorted({m["ttype"] for m in ms} - {ty})
            cell = (f"{np.mean(inr):+.1f} ({min(inr):+.1f})" if len(inr) == len(ms) else
                    f"{np.mean(inr):+.1f} ({min(inr):+.1f}), {len(ms) - len(inr)} out of range"
                    if inr else "out of range")
            cells.append(cell + (f" [{'/'.join(fb)}]" if fb else ""))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    # the verdict, per curve
    verdict_lines = []
    for c in curves:
        ms = [m for m in margins[c] if lo <= m["bits"] <= hi]
        if not ms:
            verdict_lines.append(f"target ({curve_label(c)}): no llama.cpp tensor in {lo:g}-{hi:g} "
                                 "bits: not checked")
            continue
        unmeasured = [m for m in ms if m["margin"] is None]
        short = sorted([m for m in ms if m["margin"] is not None and m["margin"] < TENSOR_MARGIN],
                       key=lambda m: m["margin"])
        ok = not unmeasured and not short
        worst = min((m for m in ms if m["margin"] is not None), key=lambda m: m["margin"],
                    default=None)
        tail = (f"; smallest margin {worst['margin']:+.2f} dB ({worst['type']} "
                f"[{worst['ttype']}] on {worst['tensor']} at {worst['bits']:.2f} bits)"
                if worst else "")
        by_type = {}
        for m in short:
            by_type.setdefault(m["type"], []).append(m)
        verdict_lines.append(
            f"target ({curve_label(c)}: at least {TENSOR_MARGIN:g} dB above every --pure "
            f"llama.cpp type at equal bits, {lo:g}-{hi:g} bits per weight): " +
            ("met" if ok else "NOT met") +
            f": {len(ms) - len(short) - len(unmeasured)} of {len(ms)} (type, tensor) pairs "
            f"at >= {TENSOR_MARGIN:g} dB" + tail +
            ("; short: " + ", ".join(f"{ty} on {len(v)} tensors (worst {v[0]['margin']:+.2f})"
                                     for ty, v in by_type.items()) if short else "") +
            (f"; {len(unmeasured)} outside ggzip's measured bits" if unmeasured else ""))
    return lines, verdict_lines, margins


def tensor_plot(tb: TensorBench, res: dict, margins: dict, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    colors = ("C0", "C2", "C3")
    curves = list(res["curves"])
    for ax, kind in zip(axes.flat, TENSOR_KINDS):
        for il, col in zip(tb.layers, colors):
            name = f"blk.{il}.{kind}.weight"
            for c, ls in zip(curves, ("-", "--", ":", "-.")):
                xs, ys = tensor_curve(res["curves"][c], name)
                ax.plot(xs, ys, "o" + ls, color=col, ms=3,
                        label=f"{curve_label(c)}, layer {il}")
            pts = [(p["tensors"][name]["bits"], p["tensors"][name]["snr"], p["key"].split("-")[1])
                   for p in res["kq"] if "refused" not in p]
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], marker="s",
                       facecolors="none", edgecolors=col, label=f"llama.cpp --pure, layer {il}")
            if il == tb.layers[0]:
                for x, y, ty in pts:
                    ax.annotate(ty, (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.axvspan(*TENSOR_RANGE, color="0.95", zorder=0)
        ax.set_title(f"EmbeddingGemma-300M {kind}", fontsize=10)
        ax.set_xlabel("bits per weight of the tensor")
        ax.set_ylabel("imatrix-weighted SNR (dB)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    ax = axes.flat[7]
    for c, mk in zip(curves, ("o", "^", "v", "s")):
        ms = [m for m in margins[c] if m["margin"] is not None]
        ax.scatter([m["bits"] for m in ms], [m["margin"] for m in ms], marker=mk, s=12,
                   label=curve_label(c))
    ax.axhline(TENSOR_MARGIN, color="C3", ls="--", label=f"target: +{TENSOR_MARGIN:g} dB")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axvspan(*TENSOR_RANGE, color="0.95", zorder=0)
    ax.set_title("margin: ggzip's SNR minus llama.cpp's, at its bits", fontsize=10)
    ax.set_xlabel("bits per weight of the llama.cpp tensor")
    ax.set_ylabel("dB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)


def per_tensor_main(args, given, src) -> int:
    t0 = time.perf_counter()
    tb = TensorBench(args)
    res = tb.run()
    lines, verdict_lines, margins = tensor_report(tb, res)
    minutes = (time.perf_counter() - t0) / 60
    steps = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]))
    text = "\n".join([
        provenance("bench_rd.py", given, f", source hash {src} (sha256 of {', '.join(SOURCES)})"),
        f"This invocation: {minutes:.0f} min, {tb.computed} points computed"
        + (f", {tb.reused} taken from the cache" if tb.reused else "")
        + (f"; minutes by step: {steps}" if steps else "") + ".", "",
        "EmbeddingGemma-300M (true F32), tensor by tensor: "
        f"{', '.join(TENSOR_KINDS)} of layers {', '.join(map(str, tb.layers))} "
        f"({len(tb.names)} tensors). **SNR** = 10 log10(sum_j c_j sum_i W_ij^2 / sum_j c_j "
        "sum_i (W_ij - What_ij)^2), c_j = the imatrix's E[x_j^2] of the tensor's input "
        "column j (llama-imatrix on tests/data/declaration.txt); ggzip's rescaling undone. "
        "**Bits** per weight of a tensor: llama.cpp, 8 x its bytes / its values; ggzip, "
        "8 x its rANS frame / its values. llama.cpp: `llama-quantize --pure --imatrix` "
        f"{', '.join(args.tensor_types)} (a tensor whose row is not a multiple of its "
        "type's block falls back to another type, shown in brackets). ggzip: `ggzip convert "
        f"--target-bpw B --imatrix` (uniform rates, --embd-share 1) at B = "
        f"{', '.join(args.tensor_rates)}; ggzip's SNR at a llama.cpp tensor's bits is "
        "interpolated linearly on that tensor's own ggzip points."
        + ("".join(f" Variant {v}: {variant_text(v)}." for v in args.variant_names)), ""]
        + [f"- {n}" for n in args.variant_notes] + ([""] if args.variant_notes else [])
        + lines + [f"- {v}" for v in verdict_lines] + [""])
    print("\n" + text)
    if args.no_write:
        return 0
    tensor_plot(tb, res, margins, args.tensor_png)
    write_section("rd-tensor", "### Rate vs quality per tensor (`scripts/bench_rd.py --per-tensor`)"
                  "\n\n" + text + f"\n![per tensor]({os.path.relpath(args.tensor_png, args.out.parent)})\n",
                  args.out)
    print(f"wrote {args.out} (section rd-tensor) and {args.tensor_png}")
    return 0


# ---- main ------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rates", default=None,
                    help=f"ggzip's --target-bpw points (default: causal {','.join(CAUSAL_RATES)}, "
                         f"EmbeddingGemma {','.join(EMBED_RATES)})")
    ap.add_argument("--quick", action="store_true",
                    help="rates 3.9,5,6 only, 4 chunks, 100 sentences")
    ap.add_argument("--kquants", default=None,
                    help="llama-quantize types to compare (default: causal "
                         f"{','.join(CAUSAL_KQUANTS)} (+{'/'.join(EXTRA_KQUANTS['smollm2'])} on "
                         f"SmolLM2), EmbeddingGemma {','.join(EMBED_KQUANTS)})")
    ap.add_argument("--variants", default="",
                    help=f"levers of convert, each its own curve (known: {', '.join(VARIANTS)})")
    ap.add_argument("--per-tensor", action="store_true",
                    help="only the per-tensor comparison on EmbeddingGemma (section rd-tensor)")
    ap.add_argument("--tensor-types", default=",".join(TENSOR_TYPES),
                    help="--per-tensor: llama-quantize --pure types")
    ap.add_argument("--tensor-rates", default=",".join(TENSOR_RATES),
                    help="--per-tensor: ggzip --target-bpw points")
    ap.add_argument("--shares", default=",".join(f"{x:g}" for x in SHARES),
                    help="token_embd shares tried for EmbeddingGemma's split rates")
    ap.add_argument("--chunks", type=int, default=6, help="512-token chunks of perplexity")
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--plain", action="store_true",
                    help="EmbeddingGemma also without statistics (causal models always are)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-rd",
                    help="cache folder; a sub-folder per source hash and parameters")
    ap.add_argument("--keep-gguf", action="store_true",
                    help="keep each point's GGUF (default: deleted once measured)")
    ap.add_argument("--out", type=Path, default=BENCH_MD, help="the markdown file to write (default BENCHMARKS.md)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "rd.png", help="the plot to write")
    ap.add_argument("--tensor-png", type=Path, default=ROOT / "docs" / "rd_tensor.png",
                    help="--per-tensor: the plot to write")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rates, args.chunks, args.sentences = "3.9,5,6", 4, 100
    args.rates = [f"{float(x):g}" for x in args.rates.split(",")] if args.rates else None
    args.kquants = [q for q in args.kquants.split(",") if q] if args.kquants else None
    args.shares = [float(x) for x in args.shares.split(",") if x]
    args.tensor_types = [q for q in args.tensor_types.split(",") if q]
    args.tensor_rates = [f"{float(x):g}" for x in args.tensor_rates.split(",") if x]
    args.variant_names, args.variant_notes = usable_variants(
        [v for v in args.variants.split(",") if v])
    models = [m for m in args.models.split(",") if m]
    for name in models:
        if name not in MODELS:
            sys.exit(f"bench_rd: unknown model {name} (known: {', '.join(MODELS)})")
    given = argv if argv is not None else sys.argv[1:]
    src = source_hash(SOURCES)
    # every run-wide parameter of a tool or of the evaluation; a point's own are in its name
    params = {"chunks": args.chunks, "sentences": args.sentences, "threads": args.threads, "ctx": CTX,
              "shares": args.shares, "select_rate": SELECT_RATE}
    phash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    args.run_dir = args.work / f"{src}-{phash}"
    args.work.mkdir(parents=True, exist_ok=True)
    for old in args.work.iterdir():   # other revisions' or parameters' points are never used
        if old != args.run_dir and old.is_dir() and re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{8}", old.name):
            print(f"bench_rd: removing {old} (another source hash or parameters)", flush=True)
            shutil.rmtree(old)
    args.run_dir.mkdir(exist_ok=True)
    (args.run_dir / "params.json").write_text(json.dumps({"source_hash": src, "sources": SOURCES, **params},
                                                         indent=1))
    print(f"bench_rd: source hash {src}, cache {args.run_dir}", flush=True)
    if args.per_tensor:
        return per_tensor_main(args, given, src)
    t0 = time.perf_counter()
    results = {}
    for name in models:
        b = Bench(name, args)
        res = b.run()
        results[b.label] = (res, b.embedding, b)
        for line in verdicts(res, b.embedding, b):
            print(" ", line)
    minutes = (time.perf_counter() - t0) / 60
    computed = sum(b.computed for _, _, b in results.values())
    reused = sum(b.reused for _, _, b in results.values())
    steps = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]))
    causal = [b for _, e, b in results.values() if not e]
    emb = [b for _, e, b in results.values() if e]
    variants = sorted({v for b in causal for v in b.variants})

    lines = [
        provenance("bench_rd.py", given, f", source hash {src} (sha256 of {', '.join(SOURCES)})"),
        f"This invocation: {minutes:.0f} min, {computed} points computed"
        + (f", {reused} taken from an interrupted invocation of the same source hash and parameters"
           if reused else "") + (f"; minutes by step: {steps}" if steps else "") + ".", "",
        "Every point is a GGUF made from the same F32 GGUF and run by llama.cpp's own tools "
        "(the pinned build in build/llama/bin). llama.cpp: `llama-quantize TYPE`, with and "
        "without an imatrix of `llama-imatrix` on tests/data/declaration.txt (Q8_0 ignores it). "
        "ggzip: `ggzip convert --target-bpw B` (uniform rates) with that imatrix (the "
        "converter's default rescaling alpha with statistics, 0.25)" +
        (" and without an imatrix (its default then: the statistics of llama-imatrix on "
         f"{RANDOM_TOKENS} tokens drawn at random from the vocabulary, data-free; llama.cpp "
         "without an imatrix uses none)" if causal or args.plain else "") +
        ("; levers, each on top of the imatrix curve: " +
         "; ".join(f"**ggzip+{v}**: {variant_text(v)}" for v in variants) if variants else "") +
        " (B is the per-tensor target; near one step per row at the no-clip floor the "
        "rate saturates, so B = 7 lands lower). **Bits/weight** = 8 x all tensor bytes in "
        "the file / all tensor values (token embedding and norms included, metadata not); "
        "a ggzip file counts its rANS frames. **Weight SNR**: size-weighted mean over every "
        "2-D weight of each tensor's 10 log10(|W|^2/|W-W_hat|^2), ggzip's rescaling undone "
        f"(a tensor re-coded without loss counts {SNR_CAP:g} dB; the share of such weights "
        "is shown). Evaluation text "
        "(never the calibration text): scripts/data/alice-ch1-3.txt (Alice's Adventures in "
        "Wonderland, chapters I-III, public domain).", ""]
    lines += [f"- {n}" for n in args.variant_notes] + ([""] if args.variant_notes else [])
    if causal:
        lines += [
            "Causal models: their F32 input is dequantized from a llama.cpp file, so a type "
            "that puts a tensor back on its source type re-codes it (nearly) without loss. "
            f"A llama.cpp point is **flattered** when {REGRID_SHARE:.0%} of all 2-D weights are "
            f"re-coded without loss, or {REGRID_LOW_SHARE:.0%} of the weights it codes below 8 "
            f"bits come out at >= {REGRID_DB:g} dB (from float weights Q8_0 reaches ~45 dB): "
            "it is shown, hollow in the plot, and left out of the comparisons; ggzip "
            "re-quantizes every tensor. Their rows (576 / 640 values) are no multiple of 256, "
            "so llama-quantize codes most tensors of the K and IQ4_XS types in a fallback "
            "type of 32-value blocks (IQ4_NL, Q4_0, Q5_0, ...), and it keeps the tied token "
            "embedding at Q8_0 or Q6_K: the types column says what each file holds (share "
            "of 2-D weights). **Equal KLD**: for each llama.cpp point, ggzip's rate where its curve of "
            "the same statistics (no imatrix / the imatrix) reaches the point's KLD (log "
            "KLD linear in bits/weight between neighbouring points; \"out of range\" outside "
            "ggzip's measured points), and the byte ratio ggzip / llama.cpp. **Issue 16's "
            f"target**: at {REF_BYTES:g}x the bytes of {REF_TYPE}, ggzip's KLD (interpolated at "
            f"{REF_BYTES:g} x {REF_TYPE}'s bits/weight) no higher than {REF_TYPE}'s.", ""]
    for label, (res, embedding, b) in results.items():
        n_eval = (f"{res[1].get('sentences', '?')} sentences, llama-embedding (mean pooling, "
                  "L2-normalized): cosine of each to the F32 model's embedding"
                  if embedding else
                  f"`llama-perplexity --kl-divergence`, {args.chunks} chunks of {CTX} tokens "
                  "(the second half of each scored): mean KL divergence of the next-token "
                  "distribution from the F32 model's, share of tokens whose top choice agrees, "
                  "perplexity")
        lines += [f"**{label}**: {n_eval}.", ""] + table(res, embedding) + [""]
        if not embedding:
            flat = [p for p in res if flattered(p)]
            lines += [f"{label}, the ggzip rate at each llama.cpp point's KLD:", ""] + \
                equal_kld_table(res) + [""]
            if flat:
                lines += ["Left out (flattered): " + "; ".join(
                    f"{p['method']} ({flatter_note(p)})" for p in flat) + ".", ""]
        lines += [f"- {v}" for v in verdicts(res, embedding, b)] + [""]
    text = "\n".join(lines)
    print("\n" + text)
    if args.no_write:
        return 0
    plot(results, args.png)
    write_section("rd", "## Rate vs quality (`scripts/bench_rd.py`)\n\n" + text +
                  f"\n![rate vs quality]({os.path.relpath(args.png, args.out.parent)})\n", args.out)
    print(f"wrote {args.out} (section rd) and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
