#!/usr/bin/env python3
"""Rate vs quality: ggzip convert against llama.cpp's quantizations, one run.

    python scripts/bench_rd.py [--models embeddinggemma-300m,gemma3-270m]
                               [--rates 3,3.5,3.9,4.5,5,5.5,6,6.5,7] [--no-write]
                               [--embeddinggemma DIR] [--gemma3 FILE]

Weights: every 2-D weight but the token embedding (as in DESIGN.md), of
  * EmbeddingGemma-300M: true F32 safetensors;
  * Gemma-3-270M: exists only as a Q4_K_M GGUF, so it is *dequantized* first: its
    weights lie on a 4-8-bit grid, which flatters every method's SNR there.
Quality: weight SNR, 10 log10(|W|^2 / |W - W_hat|^2) per tensor, averaged over
tensors weighted by size (dB; a tensor coded without loss counts 99 dB).  No activation statistics (alpha 0): the rescaling
trades weight SNR for output error and is judged in tests/test_convert.py.
Rate, bits per weight of those tensors:
  * ggzip: the real size of the codec's frames (ggzip.codec.encode, layout q8_0,
    everything included) when the native codec is installed, and the order-0
    entropy of symbols + scales;
  * llama.cpp: tensor bytes of files made by build/llama/bin/llama-quantize
    (Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, Q8_0) from an F32 GGUF of the same weights,
    dequantized by gguf-py; and Q4_0/Q5_0/Q8_0 by gguf-py's port of llama.cpp's
    reference quantizers, which needs no build.
Output quality (--kl, on by default): SmolLM2-135M (llama; dequantized from its
Q4_1/Q8_0 GGUF, the only form it exists in) run by ggzip's numpy forward pass
(ggzip.quantize.calibrate, checked against the float model in the tests): mean
KL(float || quantized) of next-token distributions on a held-out English text, for
ggzip without statistics (alpha 0) and calibrated on another text (--calib-text,
alpha 0.25), against Q4_0/Q5_0/Q8_0 (gguf-py) and the k-quants when llama-quantize
is built.
Writes the tables to BENCHMARKS.md (section "rd") and docs/rd.png unless --no-write.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmd import write_section  # noqa: E402

from ggzip.convert import quantize_tensor  # noqa: E402
from ggzip.convert.convert import _find_llama_tool  # noqa: E402
from ggzip.convert.safetensors import SafeTensors  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KQUANTS = ["Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
LEGACY = [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q5_0,
          gguf.GGMLQuantizationType.Q8_0]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fetch_path(name: str) -> Path:
    try:
        from ggzip.fetch import fetch
    except ImportError:
        sys.exit(f"bench_rd: no ggzip.fetch; pass the path of {name} explicitly")
    return Path(fetch(name))


# ---- models ----------------------------------------------------------------

# HF Gemma-3 names -> llama.cpp GGUF names (convert_hf_to_gguf.py's mapping)
_GEMMA_MAP = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


class Model:
    """name, label, GGUF-named tensors (float32), and how to make an F32 GGUF."""

    def __init__(self, name, label, tensors, kv, arch):
        self.name, self.label, self.tensors, self.kv, self.arch = name, label, tensors, kv, arch

    def weights(self):
        return {n: a for n, a in self.tensors.items()
                if a.ndim == 2 and n != "token_embd.weight" and a.shape[1] % 32 == 0}

    def write_f32_gguf(self, path: Path):
        w = gguf.GGUFWriter(path, self.arch)
        for k, (v, t, sub) in self.kv.items():
            w.add_key_value(k, v, t, sub_type=sub)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        for n, a in self.tensors.items():
            w.add_tensor(n, np.ascontiguousarray(a, np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file()
        w.close()


def load_embeddinggemma(folder: Path) -> Model:
    st = SafeTensors(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    t = {}
    for n in st.names():
        a = np.asarray(st.get(n), np.float32)
        base = n[len("model."):] if n.startswith("model.") else n
        if base == "embed_tokens.weight":
            t["token_embd.weight"] = a
        elif base == "norm.weight":
            t["output_norm.weight"] = a + 1      # llama.cpp stores Gemma's 1 + w
        elif base.startswith("layers."):
            _, il, rest = base.split(".", 2)
            key = rest[:-len(".weight")]
            g = f"blk.{il}.{_GEMMA_MAP[key]}.weight"
            t[g] = a + 1 if key.endswith("norm") else a
    A = gguf.GGUFValueType
    arch = "gemma-embedding"
    kv = {f"{arch}.{k}": (v, A.UINT32, None) for k, v in {
        "context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
        "block_count": cfg["num_hidden_layers"], "feed_forward_length": cfg["intermediate_size"],
        "attention.head_count": cfg["num_attention_heads"],
        "attention.head_count_kv": cfg["num_key_value_heads"],
        "attention.key_length": cfg["head_dim"], "attention.value_length": cfg["head_dim"],
        "attention.sliding_window": cfg["sliding_window"]}.items()}
    kv[f"{arch}.attention.layer_norm_rms_epsilon"] = (cfg["rms_norm_eps"], A.FLOAT32, None)
    kv[f"{arch}.rope.freq_base"] = (cfg["rope_theta"], A.FLOAT32, None)
    return Model("embeddinggemma-300m", "EmbeddingGemma-300M (true F32)", t, kv, arch)


def load_gemma3(path: Path) -> Model:
    r = gguf.GGUFReader(path)
    t = {x.name: gguf.quants.dequantize(x.data, x.tensor_type).reshape(
        tuple(int(v) for v in reversed(x.shape))).astype(np.float32) for x in r.tensors}
    kv = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k in ("general.architecture", "general.file_type"):
            continue
        typ = f.types[0]
        kv[k] = (f.contents(), typ, f.types[-1] if typ == gguf.GGUFValueType.ARRAY else None)
    types = sorted({x.tensor_type.name for x in r.tensors if len(x.shape) == 2})
    return Model("gemma3-270m", f"Gemma-3-270M (dequantized from {'/'.join(types)})", t, kv,
                 r.fields["general.architecture"].contents())


# ---- measurements ------------------------------------------------------------

SNR_CAP = 99.0   # a tensor coded without loss (a dequantized Q5_0 tensor re-coded as Q5_0)


def snr_db(w, deq):
    e = float(np.sum(np.square(w - deq, dtype=np.float64)))
    s = float(np.sum(np.square(w, dtype=np.float64)))
    return SNR_CAP if e <= s * 10 ** (-SNR_CAP / 10) else 10 * np.log10(s / e)


def mean_snr(items):
    """items: (snr_db, weights) -> size-weighted mean dB."""
    return float(np.average([s for s, _ in items], weights=[n for _, n in items]))


def ggzip_point(weights, bpw, codec):
    n = sum(a.size for a in weights.values())
    bits_h = bits_c = 0.0
    snrs = []
    t0 = time.perf_counter()
    for name, a in weights.items():
        blocks, rep = quantize_tensor(name, a, target_bpw=bpw, theta=0.0)
        bits_h += rep.stats.bpw * a.size
        snrs.append((rep.stats.snr_db, a.size))
        if codec is not None:
            frame = codec.encode(blocks, layout="q8_0", row_size=blocks.shape[1], threads=0)
            bits_c += len(frame) * 8
    return {"method": f"ggzip target {bpw:g}", "bpw_entropy": bits_h / n,
            "bpw": (bits_c / n) if codec is not None else bits_h / n,
            "snr": mean_snr(snrs), "seconds": time.perf_counter() - t0, "kind": "ggzip"}


def legacy_point(weights, qtype):
    n = sum(a.size for a in weights.values())
    bits, snrs = 0, []
    for a in weights.values():
        b = gguf.quants.quantize(a, qtype)
        bits += b.nbytes * 8
        snrs.append((snr_db(a, gguf.quants.dequantize(b, qtype)), a.size))
    return {"method": f"{qtype.name} (gguf-py)", "bpw": bits / n, "snr": mean_snr(snrs),
            "kind": "legacy"}


def kquant_points(model, weights, tmp: Path):
    exe = _find_llama_tool("llama-quantize")
    if exe is None:
        return [], "llama-quantize not found (scripts/build_llama.sh): no k-quant points"
    src = tmp / f"{model.name}.f32.gguf"
    model.write_f32_gguf(src)
    pts, notes = [], []
    n = sum(a.size for a in weights.values())
    for qt in KQUANTS:
        out = tmp / f"{model.name}.{qt}.gguf"
        r = subprocess.run([str(exe), str(src), str(out), qt, "2"], capture_output=True, text=True)
        if r.returncode != 0:
            notes.append(f"llama-quantize {qt} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        rd = gguf.GGUFReader(out)
        bits, snrs = 0, []
        for t in rd.tensors:
            if t.name in weights:
                a = weights[t.name]
                deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(a.shape)
                bits += int(t.n_bytes) * 8
                snrs.append((snr_db(a, deq), a.size))
        pts.append({"method": f"{qt} (llama-quantize)", "bpw": bits / n, "snr": mean_snr(snrs),
                    "kind": "kquant"})
        out.unlink()
    src.unlink()
    return pts, "; ".join(notes)


# k-quants of EmbeddingGemma-300M (same tensors, no imatrix) as /work/shared's
# DESIGN.md quotes them: shown, labelled as quoted, only when llama-quantize is missing
QUOTED_KQUANTS = {"embeddinggemma-300m": [("Q3_K_M", 4.05, 17.9), ("Q4_K_M", 5.05, 23.6),
                                          ("Q5_K_M", 5.87, 29.1), ("Q6_K", 6.95, 35.5)]}


def run_model(model, rates, codec, tmp):
    weights = model.weights()
    n = sum(a.size for a in weights.values())
    print(f"\n{model.label}: {len(weights)} tensors, {n / 1e6:.1f} M weights", flush=True)
    pts = []
    for b in rates:
        p = ggzip_point(weights, b, codec)
        pts.append(p)
        print(f"  {p['method']:24s} {p['bpw']:.3f} bpw ({p['bpw_entropy']:.3f} entropy) "
              f"{p['snr']:.2f} dB  [{p['seconds']:.1f} s]", flush=True)
    for q in LEGACY:
        p = legacy_point(weights, q)
        pts.append(p)
        print(f"  {p['method']:24s} {p['bpw']:.3f} bpw  {p['snr']:.2f} dB", flush=True)
    kp, note = kquant_points(model, weights, tmp)
    for p in kp:
        print(f"  {p['method']:24s} {p['bpw']:.3f} bpw  {p['snr']:.2f} dB", flush=True)
    if not kp and model.name in QUOTED_KQUANTS:
        kp = [{"method": f"{q} (quoted from DESIGN.md, not measured here)", "bpw": b, "snr": d,
               "kind": "kquant"} for q, b, d in QUOTED_KQUANTS[model.name]]
        note += "; k-quant rows quoted from DESIGN.md (same tensors, no imatrix)"
    if note:
        print("  note:", note)
    return pts + kp, note


CALIB_TEXT = """The history of the city begins with a small village on the river. Over the
years the people built houses, a market and a school, and the village grew into a
town. Merchants came from the north and the south to trade grain, wine and cloth.
When the railway arrived, the town became a city, and new factories opened near the
station. Today the old market is a museum, and visitors walk along the river to see
the bridges and the gardens. In the winter the river sometimes freezes, and children
skate on the ice while their parents sell hot chestnuts on the banks."""

EVAL_TEXT = """A young engineer moved to the capital to work for a company that made radios.
She learned to repair old machines, and in the evenings she studied mathematics at
the library. After ten years she opened her own shop near the harbour, where sailors
and fishermen brought their instruments. Her work was known for being careful and
honest, and her shop is still open today. Every spring she teaches a short course for
students who want to understand how a receiver turns a weak signal into a voice."""


def kl_mean(ref, got):
    la = ref - ref.max(1, keepdims=True)
    la -= np.log(np.exp(la).sum(1, keepdims=True))
    lb = got - got.max(1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(1, keepdims=True))
    return float((np.exp(la) * (la - lb)).sum(1).mean())


def kl_points(smol_path: Path, rates, tmp: Path):
    """Output quality on SmolLM2: (method, bpw, KL, top-1 agreement) rows."""
    from ggzip.convert import GGUFModel, convert
    from ggzip.quantize.calibrate import BPETokenizer, logits
    src = GGUFModel(smol_path)
    ids = BPETokenizer(src.kv).encode(EVAL_TEXT)
    with np.errstate(over="ignore"):
        ref = logits(src, ids).astype(np.float64)
    mats = [n for n in src.tensors if len(src.shape(n)) == 2]
    n = sum(int(np.prod(src.shape(x))) for x in mats)
    calib = tmp / "calib.txt"
    calib.write_text(CALIB_TEXT)
    rows = []

    def score(method, kind, bpw, path):
        with np.errstate(over="ignore"):
            got = logits(GGUFModel(path), ids).astype(np.float64)
        rows.append({"method": method, "kind": kind, "bpw": bpw, "kl": kl_mean(ref, got),
                     "top1": float((got.argmax(1) == ref.argmax(1)).mean())})
        print(f"  {method:34s} {bpw:.3f} bpw  KL {rows[-1]['kl']:.4f}  "
              f"top-1 {rows[-1]['top1']:.3f}", flush=True)

    out = tmp / "smol.gguf"
    for b in rates:
        for label, kw in (("no statistics", dict(alpha=0.0)),
                          ("calibrated", dict(calib_text=calib))):
            rep = convert(smol_path, out, target_bpw=b, progress=False, **kw)
            score(f"ggzip {b:g}, {label}", "ggzip-calib" if kw.get("calib_text") else "ggzip",
                  rep.totals()["bpw"], out)
    f32 = tmp / "smol.f32.gguf"
    convert(smol_path, f32, alpha=0.0, keep_float=True, progress=False)
    f32m = GGUFModel(f32)
    for qt in LEGACY:
        wr = gguf.GGUFWriter(out, f32m.arch)
        from ggzip.convert.convert import _copy_kv
        _copy_kv(wr, f32m)
        for name in f32m.tensors:
            a = f32m.float32(name)
            if a.ndim == 2 and a.shape[1] % 32 == 0:
                wr.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
            else:
                wr.add_tensor(name, a)
        wr.write_header_to_file(); wr.write_kv_data_to_file(); wr.write_tensors_to_file()
        wr.close()
        bpw = gguf.GGML_QUANT_SIZES[qt][1] * 8 / gguf.GGML_QUANT_SIZES[qt][0]
        score(f"{qt.name} (gguf-py)", "legacy", bpw, out)
    exe = _find_llama_tool("llama-quantize")
    note = ""
    if exe is None:
        note = "llama-quantize not found: no k-quant points"
    for qt in (KQUANTS if exe else []):
        r = subprocess.run([str(exe), str(f32), str(out), qt, "2"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            note += f" llama-quantize {qt} failed;"
            continue
        rd = gguf.GGUFReader(out)
        bits = sum(int(t.n_bytes) * 8 for t in rd.tensors if t.name in mats)
        score(f"{qt} (llama-quantize)", "kquant", bits / n, out)
    del f32m
    return rows, note


def verdict(pts):
    """The two targets of the project, checked on these points."""
    g = sorted([p for p in pts if p["kind"] == "ggzip"], key=lambda p: p["bpw"])
    k = [p for p in pts if p["kind"] == "kquant"]
    if not k:
        return "k-quant points missing: targets not checked"
    out = []
    bpw_g = np.array([p["bpw"] for p in g])
    snr_g = np.array([p["snr"] for p in g])
    q4 = next((p for p in k if p["method"].startswith("Q4_K_M")), None)
    if q4 and bpw_g.min() <= 3.9 <= bpw_g.max():
        at = float(np.interp(3.9, bpw_g, snr_g))   # the ggzip curve at exactly 3.9 bpw
        out.append(f"3.9 bpw vs Q4_K_M ({q4['snr']:.2f} dB at {q4['bpw']:.2f} bpw): ggzip "
                   f"{at:.2f} dB - " + ("met" if at >= q4["snr"] else "NOT met")
                   + f" (Gaussian R(D) bound at 3.9 bpw: {6.02 * 3.9:.1f} dB)")
    worse = []
    for p in k:
        if 4 <= p["bpw"] <= 7 and bpw_g.min() <= p["bpw"] <= bpw_g.max():
            mine = float(np.interp(p["bpw"], bpw_g, snr_g))
            if mine <= p["snr"]:
                worse.append(p["method"])
            out.append(f"{p['method']} {p['bpw']:.2f} bpw: k-quant {p['snr']:.2f} dB, "
                       f"ggzip {mine:.2f} dB ({mine - p['snr']:+.2f})")
    out.append("4-7 bpw: ggzip above every k-quant point" if not worse else
               "4-7 bpw: NOT above " + ", ".join(worse))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="embeddinggemma-300m,gemma3-270m")
    ap.add_argument("--rates", default="3,3.5,3.9,4.5,5,5.5,6,6.5,7")
    ap.add_argument("--embeddinggemma", type=Path, help="safetensors folder")
    ap.add_argument("--gemma3", type=Path, help="Gemma-3-270M GGUF")
    ap.add_argument("--smollm2", type=Path, help="SmolLM2 GGUF (output-quality section)")
    ap.add_argument("--no-kl", action="store_true", help="skip the output-quality section")
    ap.add_argument("--kl-rates", default="3.5,3.9,4.5,5.5,6.5")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    try:
        import ggzip.codec as codec
    except Exception as e:   # native library not built: entropy rates only
        print(f"bench_rd: no native codec ({e}); ggzip rates are order-0 entropy")
        codec = None
    rates = [float(x) for x in args.rates.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ggzip-rd-") as tmp:
        for name in args.models.split(","):
            if name == "embeddinggemma-300m":
                p = args.embeddinggemma or fetch_path(name)
                if (p / "model_download").is_dir():
                    p = p / "model_download"
                model = load_embeddinggemma(p)
            elif name == "gemma3-270m":
                p = args.gemma3 or fetch_path(name)
                if p.is_dir():
                    p = next(iter(sorted(p.rglob("*.gguf"))))
                model = load_gemma3(p)
            else:
                sys.exit(f"bench_rd: unknown model {name}")
            pts, note = run_model(model, rates, codec, Path(tmp))
            results[model.label] = (pts, note, verdict(pts))
            print(results[model.label][2])
            del model
        kl_rows, kl_note = [], ""
        if not args.no_kl:
            p = args.smollm2 or fetch_path("smollm2")
            if p.is_dir():
                p = next(iter(sorted(p.rglob("*.gguf"))))
            print("\nSmolLM2-135M output quality (KL on held-out text)", flush=True)
            kl_rows, kl_note = kl_points(p, [float(x) for x in args.kl_rates.split(",")],
                                         Path(tmp))

    lines = [f"Weight SNR vs bits per weight, `python scripts/bench_rd.py` on {cpu_name()}, "
             f"{time.strftime('%Y-%m-%d')}. All 2-D weights but the token embedding; SNR is "
             "the size-weighted mean over tensors of 10 log10(|W|^2/|W-W_hat|^2). ggzip: "
             "one step per row, rate-controlled per tensor, no imatrix (alpha 0); its rate is "
             + ("the real size of the rANS frames (all overhead included)"
                if codec is not None else "the order-0 entropy of symbols + scales")
             + ". llama.cpp: tensor bytes of llama-quantize's files; Q4_0/Q5_0/Q8_0 also "
             "from gguf-py's port of the reference quantizers (on the dequantized Gemma-3 they "
             "re-code its Q5_0/Q8_0 tensors without loss: 99 dB each, so they look better "
             "than they are). Shannon's bound for a Gaussian source, 6.02 dB per bit, "
             "is the reference line: no quantizer of i.i.d. Gaussian weights can beat it.", ""]
    for label, (pts, note, ver) in results.items():
        lines += [f"**{label}**", "", "| method | bits/weight | weight SNR (dB) |",
                  "|---|---|---|"]
        for p in sorted(pts, key=lambda p: p["bpw"]):
            extra = f" (entropy {p['bpw_entropy']:.3f})" if "bpw_entropy" in p and codec else ""
            lines.append(f"| {p['method']} | {p['bpw']:.3f}{extra} | {p['snr']:.2f} |")
        lines += [""] + ([f"Note: {note}", ""] if note else []) + \
            ["Targets: " + ver.replace("\n", "; "), ""]
    if kl_rows:
        lines += ["**Output quality, SmolLM2-135M** (dequantized from Q4_1/Q8_0; ggzip's numpy "
                  "forward pass; mean KL(float || quantized) of the next-token distribution "
                  "on a held-out text, and how often the top token agrees; every 2-D weight "
                  "counted, the tied embedding too; ggzip bpw = order-0 entropy)", "",
                  "| method | bits/weight | KL (nats) | top-1 agreement |", "|---|---|---|---|"]
        for p in sorted(kl_rows, key=lambda p: p["bpw"]):
            lines.append(f"| {p['method']} | {p['bpw']:.3f} | {p['kl']:.4f} | {p['top1']:.3f} |")
        lines += [""] + ([f"Note: {kl_note}", ""] if kl_note else [])
        q4 = next((p for p in kl_rows if p["method"].startswith("Q4_K_M")), None)
        low = [p for p in kl_rows if p["kind"] == "ggzip-calib" and p["bpw"] <= 3.9]
        if q4 and low:
            best = min(low, key=lambda p: p["kl"])
            lines += [f"Target (output quality): ggzip calibrated at {best['bpw']:.2f} bpw KL "
                      f"{best['kl']:.4f} vs Q4_K_M at {q4['bpw']:.2f} bpw KL {q4['kl']:.4f}: "
                      + ("met" if best["kl"] <= q4["kl"] else "NOT met"), ""]
    text = "\n".join(lines)
    print("\n" + text)
    if args.no_write:
        return 0
    write_section("rd", "## Rate vs quality (`scripts/bench_rd.py`)\n\n" + text +
                  "\n![rate vs quality](docs/rd.png)\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_ax = len(results) + (1 if kl_rows else 0)
    fig, axes = plt.subplots(1, n_ax, figsize=(6 * n_ax, 4.5), squeeze=False)
    if kl_rows:
        ax = axes[0][-1]
        for kind, mk, lab in (("ggzip", "o-", "ggzip, no statistics"),
                              ("ggzip-calib", "o-", "ggzip, calibrated"),
                              ("legacy", "^", "gguf-py legacy"), ("kquant", "s", "llama-quantize")):
            ps = sorted([p for p in kl_rows if p["kind"] == kind], key=lambda p: p["bpw"])
            if not ps:
                continue
            if mk == "o-":
                ax.plot([p["bpw"] for p in ps], [p["kl"] for p in ps], mk, label=lab)
            else:
                ax.scatter([p["bpw"] for p in ps], [p["kl"] for p in ps], marker=mk, label=lab)
                for p in ps:
                    ax.annotate(p["method"].split()[0], (p["bpw"], p["kl"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_title("SmolLM2-135M output (dequantized from Q4_1)", fontsize=10)
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("KL(float || quantized), nats")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax, (label, (pts, _, _)) in zip(axes[0], results.items()):
        g = sorted([p for p in pts if p["kind"] == "ggzip"], key=lambda p: p["bpw"])
        ax.plot([p["bpw"] for p in g], [p["snr"] for p in g], "o-", label="ggzip (coded size)")
        xs = np.array([2.8, 8.6])
        ax.plot(xs, 6.02 * xs, ":", color="gray", label="Gaussian R(D) bound")
        for kind, mk in (("kquant", "s"), ("legacy", "^")):
            ps = [p for p in pts if p["kind"] == kind]
            if not ps:
                continue
            ax.scatter([p["bpw"] for p in ps], [p["snr"] for p in ps], marker=mk,
                       label=("llama-quantize" if "quoted" not in ps[0]["method"] else
                       "k-quants (quoted)") if kind == "kquant" else "gguf-py legacy")
            for p in ps:
                ax.annotate(p["method"].split()[0], (p["bpw"], p["snr"]), fontsize=7,
                            xytext=(3, -9), textcoords="offset points")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(10, 52)
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("weight SNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = ROOT / "docs" / "rd.png"
    tmp_png = png.with_suffix(".tmp.png")
    fig.savefig(tmp_png, dpi=110)
    os.replace(tmp_png, png)
    print(f"wrote BENCHMARKS.md (section rd) and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
