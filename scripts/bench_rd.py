#!/usr/bin/env python3
"""Rate vs quality: ggzip against llama.cpp's k-quants, every point run in llama.cpp.

    python scripts/bench_rd.py [--models embeddinggemma-300m,gemma3-270m]
                               [--rates 3.5,3.9,5,6,7] [--quick] [--chunks 6]
                               [--sentences 300] [--plain] [--threads N] [--work DIR]
                               [--out FILE] [--no-write]

Models (each made into one F32 GGUF, the input of every method):
  * EmbeddingGemma-300M: true F32 safetensors, written as a GGUF here without torch,
    as llama.cpp's convert_hf_to_gguf.py (EmbeddingGemma) names it: Gemma norms
    stored as 1 + w, the sentence-transformers 2_Dense/3_Dense projections as
    dense_2/dense_3, mean pooling; the tokenizer metadata is copied from the
    Gemma-3-270M GGUF (the same 262144-token SentencePiece vocabulary).
  * Gemma-3-270M: exists only as a Q4_K_M GGUF, so it is *dequantized* to F32
    with gguf-py: its weights lie on a 4-8-bit grid, which flatters every method.
Methods:
  * llama.cpp: build/llama/bin/llama-quantize Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, Q8_0,
    without and with an imatrix (Q8_0 ignores it);
  * ggzip convert --target-bpw B: with the same imatrix (alpha 0.25, the converter's
    default with statistics) and, with --plain, also without statistics (alpha 0);
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
    GGUF; ggzip's rescaling is undone first (W_hat in W's coordinates);
  * Gemma-3-270M: llama-perplexity on the evaluation text, --chunks N of 512
    tokens: KL divergence of each scored token's next-token distribution from the
    F32 model's (--kl-divergence), how often the top token agrees, and perplexity;
  * EmbeddingGemma-300M: llama-embedding of the first S sentences of the text
    (mean pooling, L2-normalized): cosine to the F32 model's embedding, mean and
    worst over sentences.
Cache: everything (F32 GGUF, imatrix, reference outputs, GGUFs, one JSON per
point) lives under build/bench-rd/REV/MODEL/, REV = the source hash (a sha256 of
every file that determines a point: SOURCES below, i.e. the quantizer, converter,
container and codec, the C codec, the llama.cpp patches and pin, this script and
its texts) and a hash of every run-wide tool parameter (chunks, sentences,
threads, context, the shares tried); a point's file names carry its own (method,
rate, imatrix, share).  A cache of another revision is never read (and is removed
at start), so the table is always made by one revision; an interrupted run of the
same revision resumes.  The section header gives the command, the git revision,
the source hash and how many points this invocation computed.  Writes the table
to BENCHMARKS.md (section "rd", or --out FILE) and the curves to docs/rd.png
unless --no-write.
"""
from __future__ import annotations

import argparse
import hashlib
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
from ggzip.convert.convert import (EMBD_NAME, EMBD_SHARE_DEFAULT, KEY_ALPHA, _find_llama_tool,  # noqa: E402
                                   _quantizable, split_rates)
from ggzip.container.gguf_io import parse_header  # noqa: E402
from ggzip.convert.safetensors import SafeTensors  # noqa: E402
from ggzip.quantize import load_imatrix, plan_rescale  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CALIB_TEXT = ROOT / "tests" / "data" / "declaration.txt"
EVAL_TEXT = ROOT / "scripts" / "data" / "alice-ch1-3.txt"
KQUANTS = ["Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
SNR_CAP = 99.0       # a tensor coded without loss
# A k-quant of a model dequantized from that same k-quant mix re-creates its grid:
# when this share of the weights is re-coded without loss, the point is nearly the
# source file again, not a fair comparison
REGRID_SHARE = 0.9
# split allocation for an encoder: the token embedding at a share of the target
# rate, the share picked among these at SELECT_RATE by the embedding cosine on the
# calibration text's sentences (never the evaluation text); 1 = uniform rates
SHARES = (0.51, 0.64, 0.77, 0.9, 1.0)
SELECT_RATE = "3.9"
CTX = 512            # llama-perplexity / llama-imatrix context
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


def tool(name: str) -> Path:
    exe = _find_llama_tool(name)
    if exe is None:
        sys.exit(f"bench_rd: {name} not found: build llama.cpp first (scripts/setup.sh)")
    return exe


def run(cmd: list, what: str) -> str:
    """Run a llama.cpp tool; its stdout+stderr, or exit naming the failure."""
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
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


def weight_snr(ref: GGUFModel, path: Path, plan=None) -> float:
    """Size-weighted mean over the 2-D weights of each tensor's SNR in dB (a tensor
    coded without loss counts SNR_CAP), and the share of weights in such tensors;
    plan: ggzip's rescaling, undone first."""
    q = Weights(path)
    snrs, sizes = [], []
    for name in ref.tensors:
        shp = ref.shape(name)
        if not _quantizable(name, shp):
            continue
        w = ref.float32(name)
        d = q.float32(name)
        if plan is not None:        # W' = W diag(cols) / rows  ->  W = W' rows / diag(cols)
            if name in plan.divide:
                d = d * plan.divide[name].astype(np.float32)[:, None]
            if name in plan.cols:
                d = d / plan.cols[name].astype(np.float32)[None, :]
        sig = _SIGNAL.setdefault((ref.path, name), sum_sq(w))
        err = sum_sq(w - d)
        snrs.append(SNR_CAP if err <= sig * 10 ** (-SNR_CAP / 10) else 10 * np.log10(sig / err))
        sizes.append(w.size)
    lossless = sum(n for d, n in zip(snrs, sizes) if d >= SNR_CAP) / sum(sizes)
    return float(np.average(snrs, weights=sizes)), lossless


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
        self.plans = {}
        self.share, self.share_cos = 1.0, {}

    def prepare(self):
        a = self.args
        g3 = fetch_path("gemma3-270m")
        g3 = next(iter(sorted(g3.rglob("*.gguf")))) if g3.is_dir() else g3
        f32 = self.dir / "f32.gguf"
        if self.embedding:
            folder = fetch_path("embeddinggemma-300m")
            if (folder / "model_download").is_dir():
                folder = folder / "model_download"
            self.label = "EmbeddingGemma-300M (true F32)"
            make_f32 = lambda t: write_embeddinggemma_f32(folder, g3, t)  # noqa: E731
        else:
            types = sorted({t.tensor_type.name for t in gguf.GGUFReader(g3).tensors
                            if len(t.shape) == 2})
            self.label = f"Gemma-3-270M (dequantized from {'/'.join(types)})"
            make_f32 = lambda t: write_dequantized_f32(g3, t)  # noqa: E731
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
        self.ref = GGUFModel(f32)

    def points(self):
        a = self.args
        pts = [("kq", q, False) for q in a.kquants] + [("kq", q, True) for q in a.kquants
                                                     if q != "Q8_0"]
        pts += [("gz", r, True) for r in a.rates]
        if self.embedding and self.share != 1.0:
            # the token embedding of an encoder is an input lookup (no output head):
            # a lower rate there buys a higher one for the matrices at equal size
            pts += [("gzs", r, True) for r in a.rates]
        if a.plain:
            pts += [("gz", r, False) for r in a.rates]
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
                                      f"llama-quantize {q}"))
        else:
            # gz: uniform rates (convert's default split for an encoder turned off)
            sh = (self.share if share is None else share) if kind == "gzs" else 1.0

            def mk(t):
                t0 = time.perf_counter()
                convert(self.f32, t, target_bpw=float(q), alpha=None if imat else 0.0,
                        imatrix=self.imatrix if imat else None, progress=False, embd_share=sh,
                        threads=self.args.threads)
                timed_step("ggzip convert", t0)
            atomic(out, mk)
        return out

    def embd_rate(self, q: float) -> float:
        """The token embedding's rate in convert's split at q (split_rates)."""
        shapes = {n: self.ref.shape(n) for n in self.ref.tensors}
        return split_rates(shapes, q, self.share)[1].get(EMBD_NAME, q)

    def plan(self, path: Path):
        alpha = float(Weights(path).header.value(KEY_ALPHA, 0.0))
        if alpha == 0:
            return None
        if alpha not in self.plans:
            r = self.ref
            shapes = {n: r.shape(n) for n in r.tensors}
            self.plans[alpha] = plan_rescale(r.arch, shapes, r.kv, r.float32,
                                             load_imatrix(self.imatrix), alpha)
        return self.plans[alpha]

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
        for share in a.shares:
            if f"{share:g}" in cos:
                continue
            path = self.make("gz", SELECT_RATE, True) if share == 1.0 else \
                self.make("gzs", SELECT_RATE, True, share)
            llama_in = plain_for_llama(path)
            e = embeddings(llama_in, sent_file, a.threads)
            if llama_in != path:
                llama_in.unlink()
            c = np.sum(e * ref, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
            cos[f"{share:g}"] = float(c.mean())
            cache.write_text(json.dumps(cos, indent=1))
        self.share = max(a.shares, key=lambda sh: cos[f"{sh:g}"])
        self.share_cos, self.n_calib = cos, len(sents)
        print(f"  token_embd share at {SELECT_RATE} bpw, calibration cosine: " +
              ", ".join(f"{k} {v:.5f}" for k, v in cos.items()) + f" -> {self.share:g}", flush=True)

    def share_note(self) -> str:
        return (f"token_embd at {self.share:g}x, the share picked at {SELECT_RATE} bpw by the mean cosine "
                f"on the calibration text's {self.n_calib} sentences (held out from the evaluation) among " +
                ", ".join(f"{k} ({v:.4f})" for k, v in self.share_cos.items()))

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
        path = self.make(kind, q, imat)
        res = {"key": key, "kind": kind + ("-imat" if imat else ""), **want,
               "method": (f"{q}" if kind == "kq" else f"ggzip {q}" if kind == "gz" else
                          f"ggzip {q}, token_embd at {self.embd_rate(float(q)):.2f}") +
               (" + imatrix" if imat and not (kind == "kq" and q == "Q8_0") else ""),
               **file_rate(path, ggzip_file=kind != "kq")}
        llama_in = plain_for_llama(path)
        t0 = time.perf_counter()
        res["snr"], res["lossless"] = weight_snr(self.ref, llama_in,
                                                 self.plan(llama_in) if kind != "kq" else None)
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
            q = (f"cos {r['cos_mean']:.5f} (min {r['cos_min']:.4f})" if self.embedding else
                 f"KLD {r['kld']:.4f} top-1 {r['top1']:.3f} PPL {r['ppl']:.2f}")
            print(f"  {r['method']:24s} {r['bpw']:.3f} bpw  {r['snr']:.2f} dB  {q}", flush=True)
        return res


# ---- verdict and report --------------------------------------------------------

def quality(p, embedding):
    """Higher is better: cosine, or -log KLD."""
    return p["cos_mean"] if embedding else -np.log(max(p["kld"], 1e-9))


def interp(curve, x, key):
    xs = np.array([p["bpw"] for p in curve])
    return float(np.interp(x, xs, [key(p) for p in curve]))


def verdict(res, embedding, curve="gz-imat") -> list[str]:
    """The project's two targets, on one model's points; a ggzip curve (with the
    imatrix; `curve`: uniform rates "gz-imat", or the split "gzs-imat") against
    the k-quants, each with and without the imatrix."""
    gz = sorted([p for p in res if p["kind"] == curve], key=lambda p: p["bpw"])
    kq = [p for p in res if p["kind"].startswith("kq")]
    if len(gz) < 2 or not kq:
        return ["too few points: targets not checked"]
    qname = "embedding cosine" if embedding else "KL divergence"
    fmt = (lambda p: f"{p['cos_mean']:.5f}") if embedding else (lambda p: f"{p['kld']:.4f}")
    out = []
    lo, hi = gz[0]["bpw"], gz[-1]["bpw"]
    for q4 in [p for p in kq if p["method"].startswith("Q4_K_M")]:
        if not lo <= 3.9 <= hi:
            out.append("target 1: ggzip's points do not bracket 3.9 bpw: not checked")
            break
        # ggzip's curve at exactly 3.9 bpw (its points at file level sit a little
        # above their target rates), interpolated in the quality measure
        at = interp(gz, 3.9, lambda g: quality(g, embedding))
        snr = interp(gz, 3.9, lambda g: g["snr"])
        shown = f"{at:.5f}" if embedding else f"{np.exp(-at):.4f}"
        ok = at >= quality(q4, embedding)
        if q4.get("lossless", 0) >= REGRID_SHARE:
            out.append(f"target 1 vs {q4['method']}: not comparable here ({q4['method']} "
                       f"re-creates the dequantized source's own grid: "
                       f"{q4['lossless']:.0%} of weights re-coded without loss): ggzip at "
                       f"3.9 bpw {qname} {shown} vs {fmt(q4)} at {q4['bpw']:.2f} bpw")
            continue
        out.append(f"target 1 (at 3.9 bpw no worse than Q4_K_M): ggzip + imatrix at 3.9 bpw "
                   f"{qname} {shown} (weight SNR {snr:.2f} dB) vs {q4['method']} at "
                   f"{q4['bpw']:.2f} bpw {fmt(q4)} ({q4['snr']:.2f} dB): "
                   + ("met" if ok else "NOT met"))
    inside = [p for p in kq if 4 <= p["bpw"] <= 7]
    if not inside:       # still compare the larger k-quant files with ggzip's best
        inside = [p for p in kq if p["bpw"] > 7]
        out.append("target 2: no k-quant file lies in 4-7 bpw (smallest "
                   f"{min(p['bpw'] for p in kq):.2f}): not checked; larger files compared: " +
                   "; ".join(_vs(p, gz, embedding, fmt)
                             for p in sorted(inside, key=lambda p: p["bpw"])))
        return out
    worse, lines = [], []
    for p in sorted(inside, key=lambda p: p["bpw"]):
        if p.get("lossless", 0) >= REGRID_SHARE:
            lines.append(f"{p['method']} {p['bpw']:.2f} bpw not comparable (re-creates the "
                         f"source's grid, {p['lossless']:.0%} of weights without loss; "
                         f"{fmt(p)})")
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
    out.append("target 2 (4-7 bpw: ggzip's curve above every k-quant point, " + qname +
               " interpolated at the k-quant's rate): " +
               ("met" if not worse and inside else "NOT met (" + ", ".join(worse) + ")") +
               "; " + "; ".join(lines))
    return out


def verdicts(res, embedding, bench) -> list[str]:
    """The targets on ggzip's uniform-rate curve, and again on the split-rate
    curve where there is one (convert's default for an encoder)."""
    if not any(p["kind"] == "gzs-imat" for p in res):
        return verdict(res, embedding)
    return ["uniform rates (--embd-share 1): " + v for v in verdict(res, embedding)] + \
        [f"split rates ({bench.share_note()}; convert's default for gemma-embedding: "
         f"{EMBD_SHARE_DEFAULT['gemma-embedding']:g}): " + v
         for v in verdict(res, embedding, "gzs-imat")]


def _vs(p, gz, embedding, fmt) -> str:
    best = gz[-1]
    tag = "not comparable, re-creates the source's grid; " \
        if p.get("lossless", 0) >= REGRID_SHARE else ""
    return (f"{p['method']} {p['bpw']:.2f} bpw: {tag}{fmt(p)} vs ggzip {fmt(best)} at "
            f"{best['bpw']:.2f} bpw")


def table(res, embedding) -> list[str]:
    if embedding:
        head = ["| method | bits/weight | weight SNR (dB) | cosine to F32, mean | worst |",
                "|---|---|---|---|---|"]
    else:
        head = ["| method | bits/weight | weight SNR (dB) | KLD vs F32 (nats) | top-1 = F32 "
                "| PPL |", "|---|---|---|---|---|---|"]
    rows = []
    for p in sorted(res, key=lambda p: p["bpw"]):
        snr = "-" if p["kind"] == "f32" else f"{p['snr']:.2f}" + \
            (f" ({p['lossless']:.0%} lossless)" if p.get("lossless", 0) >= 0.005 else "")
        if embedding:
            rows.append(f"| {p['method']} | {p['bpw']:.3f} | {snr} | {p['cos_mean']:.5f} | "
                        f"{p['cos_min']:.4f} |")
        else:
            rows.append(f"| {p['method']} | {p['bpw']:.3f} | {snr} | {p['kld']:.4f} | "
                        f"{p['top1']:.3f} | {p['ppl']:.3f} |")
    return head + rows


STYLE = {"f32": None, "kq": ("s", "C1", "k-quant"), "kq-imat": ("D", "C3", "k-quant + imatrix"),
         "gz": ("o--", "C0", "ggzip, no statistics"),
         "gz-imat": ("o-", "C2", "ggzip + imatrix (alpha 0.25), uniform rates"),
         "gzs-imat": ("^-", "C4", "ggzip + imatrix, split rates (token_embd share {share:g})")}


def plot(results, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 9), squeeze=False)
    for col, (label, (res, embedding, bench)) in enumerate(results.items()):
        for row, (key, ylab, log) in enumerate((
                (("cos_mean", "1 - cosine to F32 (mean)", True) if embedding else
                 ("kld", "KL divergence from F32 (nats)", True)),
                ("snr", "weight SNR (dB)", False))):
            ax = axes[row][col]
            for kind, st in STYLE.items():
                ps = sorted([p for p in res if p["kind"] == kind], key=lambda p: p["bpw"])
                if not ps or st is None:
                    continue
                ys = [(1 - p[key]) if key == "cos_mean" else p[key] for p in ps]
                xs = [p["bpw"] for p in ps]
                if kind.startswith("gz"):
                    ax.plot(xs, ys, st[0], color=st[1], label=st[2].format(share=bench.share))
                    for p, x, y in zip(ps, xs, ys):
                        ax.annotate(p["method"].split()[1].rstrip(","), (x, y), fontsize=6, color=st[1],
                                    xytext=(-4, -10), textcoords="offset points")
                else:
                    ax.scatter(xs, ys, marker=st[0], color=st[1], label=st[2])
                    for p, x, y in zip(ps, xs, ys):
                        ax.annotate(p["method"].split()[0], (x, y), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
            if log:
                ax.set_yscale("log")
            ax.axvspan(4, 7, color="0.93", zorder=0, label="4-7 bpw (target 2)")
            ax.axvline(3.9, color="0.6", ls=":")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("bits per weight (whole file)")
            ax.set_ylabel(ylab + (" - lower is better" if log else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, png)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="embeddinggemma-300m,gemma3-270m")
    ap.add_argument("--rates", default="3.5,3.9,5,6,7")
    ap.add_argument("--quick", action="store_true",
                    help="rates 3.9,5,6 only, 4 chunks, 100 sentences")
    ap.add_argument("--kquants", default=",".join(KQUANTS), help="llama-quantize types to compare")
    ap.add_argument("--shares", default=",".join(f"{x:g}" for x in SHARES),
                    help="token_embd shares tried for EmbeddingGemma's split rates")
    ap.add_argument("--chunks", type=int, default=6, help="512-token chunks of perplexity")
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--plain", action="store_true",
                    help="also ggzip without statistics (alpha 0) at every rate")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-rd",
                    help="cache folder; a sub-folder per source hash and parameters")
    ap.add_argument("--out", type=Path, default=BENCH_MD, help="the markdown file to write (default BENCHMARKS.md)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "rd.png", help="the plot to write")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rates, args.chunks, args.sentences = "3.9,5,6", 4, 100
    args.rates = [f"{float(x):g}" for x in args.rates.split(",")]
    args.kquants = [q for q in args.kquants.split(",") if q]
    args.shares = [float(x) for x in args.shares.split(",") if x]
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
    t0 = time.perf_counter()
    results = {}
    for name in args.models.split(","):
        if name not in ("embeddinggemma-300m", "gemma3-270m"):
            sys.exit(f"bench_rd: unknown model {name}")
        b = Bench(name, args)
        res = b.run()
        results[b.label] = (res, b.embedding, b)
        for line in verdicts(res, b.embedding, b):
            print(" ", line)
    minutes = (time.perf_counter() - t0) / 60
    computed = sum(b.computed for _, _, b in results.values())
    reused = sum(b.reused for _, _, b in results.values())
    steps = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]))

    lines = [
        provenance("bench_rd.py", given, f", source hash {src} (sha256 of {', '.join(SOURCES)})"),
        f"This invocation: {minutes:.0f} min, {computed} points computed"
        + (f", {reused} taken from an interrupted invocation of the same source hash and parameters"
           if reused else "") + (f"; minutes by step: {steps}" if steps else "") + ".", "",
        "Every point is a GGUF made from the same F32 GGUF and run by llama.cpp's own tools "
        "(the pinned build in build/llama/bin). k-quants: `llama-quantize`, with and "
        "without an imatrix of `llama-imatrix` on tests/data/declaration.txt. ggzip: "
        "`ggzip convert --target-bpw B` with that imatrix (rescaling alpha 0.25)" +
        (" and without statistics (alpha 0)" if args.plain else "") +
        " (B is the per-tensor target; near one step per row at the no-clip floor the "
        "rate saturates, so B = 7 lands lower). **Bits/weight** = 8 x all tensor bytes in "
        "the file / all tensor values (token embedding and norms included, metadata not); "
        "a ggzip file counts its rANS frames. **Weight SNR**: size-weighted mean over every "
        "2-D weight of each tensor's 10 log10(|W|^2/|W-W_hat|^2), ggzip's rescaling undone "
        f"(a tensor re-coded without loss counts {SNR_CAP:g} dB; the share of such weights "
        "is shown). Evaluation text "
        "(never the calibration text): scripts/data/alice-ch1-3.txt (Alice's Adventures in "
        "Wonderland, chapters I-III, public domain).", ""]
    for label, (res, embedding, b) in results.items():
        n_eval = (f"{res[1].get('sentences', '?')} sentences, llama-embedding (mean pooling, "
                  "L2-normalized): cosine of each to the F32 model's embedding"
                  if embedding else
                  f"`llama-perplexity --kl-divergence`, {args.chunks} chunks of {CTX} tokens "
                  "(the second half of each scored): mean KL divergence of the next-token "
                  "distribution from the F32 model's, share of tokens whose top choice agrees, "
                  "perplexity")
        caveat = "" if embedding else (
            " The F32 input is dequantized from a llama.cpp Q4_K_M file: a k-quant that puts "
            "a tensor back on the type it came from re-codes it without loss (the share in "
            "the SNR column), so the k-quant rows, Q4_K_M above all, partly measure the "
            "source file and are flattered; ggzip re-quantizes every tensor.")
        lines += [f"**{label}**: {n_eval}.{caveat}", ""] + table(res, embedding) + [""]
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
