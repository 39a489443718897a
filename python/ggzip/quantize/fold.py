"""Activation-aware rescaling folded exactly into the model.

A weight W (rows = outputs, columns = inputs x) is stored as W' = W diag(s) and
its input as x' = x / s, so W' x' = W x: the model computes the same function in
float.  The 1/s goes into the op that produces x:
  * an RMSNorm (or LayerNorm) whose output feeds only that weight group: its
    weight (and bias) divided by s - attn_norm -> q/k/v, ffn_norm -> gate/up,
    output_norm -> output (only when the head is not tied to token_embd);
  * rows of ffn_up -> columns of ffn_down, for a gated FFN act(gate x) * (up x),
    which is linear in up x;
  * rows of attn_v -> columns of attn_output, since attention mixes V linearly;
    a query head reads the V of its KV head (heads h*gqa .. h*gqa+gqa-1 share KV
    head h, as ggml broadcasts), so s is equal across those query heads.

Why s_j = c_j^alpha (c_j = E[x_j^2]): after rescaling, one step per row puts the
same quantization noise on every column, and the output error is
noise * sum_j c_j / s_j^2, while the rate grows by mean_j log2 s_j.  Minimizing
the first at a fixed second gives s_j^2 proportional to c_j: alpha = 0.5 is the
high-rate optimum of that model.  In practice smaller alpha wins (convert uses
0.25): statistics are noisy, and a large s_j inflates the absmax of every row, so
the no-clip floor of the step binds and rate is lost.

Gemma: HF's Gemma RMSNorm multiplies by (1 + w), but llama.cpp's
convert_hf_to_gguf.py (Gemma3Model, inherited by EmbeddingGemma) adds norm_shift
= 1 to every *norm.weight, and llama.cpp's graph multiplies by the stored value;
on the real Gemma-3-270M GGUF every attn_norm value is > 0 (min 0.16, median 13.2)
while HF's raw EmbeddingGemma input_layernorm goes down to -1.34.  So dividing the
stored weight by s is exact for gemma3 / gemma-embedding too.
Post-norms of Gemma (post_attention_norm, post_ffw_norm) normalize the *outputs*
of attn_output / ffn_down and are untouched.  Nor do they weight those rows: a
row's error reaches the residual times its norm gain g_i, which suggests steps
proportional to g_i^-gamma, but measured on EmbeddingGemma at 3.9 bpw (uniform
rates, imatrix; mean cosine to F32 over 300 Alice sentences, 0.9848 with equal
steps) every such weighting lost: gamma 1 0.9471, 0.5 0.9814 (with the norm's
rms term from E[y_i^2] 0.9606 / 0.9819), the inverse (-0.5, -0.25) 0.9724 /
0.9823, and q / k rows by attn_q_norm / attn_k_norm over each head's E[y^2]
0.9830.  Equal steps stay.

BERT is post-LN: a LayerNorm output feeds both the residual stream and the next
weights, so no norm fold is exact; its FFN is gelu(up x), not linear in up x.
Only V -> attn_output folds there.

Two folds are exact for the logits but not for every use of the model, so each
can be left out (no_fold, `ggzip convert --no-fold output,v`) and the output
records whether it was done (FOLD_KEYS):
  * output: output_norm's output is also the final hidden state that
    llama-embedding returns for a decoder; folded, it is that state / s;
  * v: the V cache then holds V / s; a quantized cache (-ctv q8_0) rounds V / s
    in blocks of 32 values by their absmax, which is not the rounding of V.
The output fold is also skipped when a dense_2 projection (sentence-transformers
head of an embedding model) reads output_norm beside the head.
tests/test_fold.py runs every arch of NORM_FOLD_ARCHS through llama.cpp: with s
made powers of two (every folded value exact in float) the folded model gives the
unfolded one's logits (embeddings) bit for bit; with arbitrary s, within F32
rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..constants import Keys
from ..errors import GGZipError

NORM_FOLD_ARCHS = {"llama", "qwen2", "qwen3", "gemma3", "gemma-embedding"}
GATED_FFN_ARCHS = NORM_FOLD_ARCHS
SUPPORTED_ARCHS = NORM_FOLD_ARCHS | {"bert"}
S_CLAMP = 256.0          # s stays within [1/256, 256]: keeps folded norms finite
# folds a user may leave out (--no-fold NAME) -> the bool key recording it
FOLD_KEYS = {"output": Keys.FOLD_OUTPUT_NORM, "v": Keys.FOLD_ATTN_V}


@dataclass
class RescalePlan:
    """What convert does to each tensor, by GGUF name."""
    cols: dict[str, np.ndarray] = field(default_factory=dict)    # W' = W * s[None, :]
    divide: dict[str, np.ndarray] = field(default_factory=dict)  # rows (2-D) or values (1-D) / s
    stat: dict[str, np.ndarray] = field(default_factory=dict)    # E[x^2] per input column, original coords
    notes: list[str] = field(default_factory=list)
    rows: dict[str, np.ndarray] = field(default_factory=dict)    # relative row steps (fisher.row_factors)
    folded: dict[str, bool] = field(default_factory=dict)        # FOLD_KEYS name -> done

    def fold_flags(self, source_kv: dict | None = None) -> dict[str, bool]:
        """{FOLD_KEYS key: done} for the output file; a fold its input already
        carried (a --keep-float file converted again) stays recorded."""
        kv = source_kv or {}
        return {key: bool(self.folded.get(name)) or bool(kv.get(key, False))
                for name, key in FOLD_KEYS.items()}

    def apply(self, name: str, w: np.ndarray, rows=None) -> np.ndarray:
        """w (numpy layout: rows = ne1) in the rescaled model; `rows` (a slice or
        index array) says which rows of the tensor w holds, when not all."""
        if name in self.cols:
            w = w * self.cols[name][None, :].astype(np.float32)
        if name in self.divide:
            s = self.divide[name].astype(np.float32)
            if w.ndim == 2:
                s = (s if rows is None else s[rows])[:, None]
            w = w / s
        return w

    def unapply(self, name: str, w: np.ndarray) -> np.ndarray:
        """The inverse of apply for a whole 2-D tensor: back to the model's coordinates."""
        if name in self.divide:
            w = w * self.divide[name].astype(np.float32)[:, None]
        if name in self.cols:
            w = w / self.cols[name][None, :].astype(np.float32)
        return w

    def row_factor(self, name: str) -> np.ndarray | None:
        """Relative step of each row: a row divided by s_i is worth s_i times
        more per unit of its own error, so it gets step / s_i (its symbols stay
        those of the unscaled row); times the row's output-sensitivity factor
        (rows, from --fisher) where there is one."""
        s = self.divide.get(name)
        f = None if s is None else (1.0 / s)
        r = self.rows.get(name)
        if r is not None:
            f = r if f is None else (f * r).astype(np.float32)
        return f

    def rescaled_stat(self, name: str) -> np.ndarray | None:
        """E[x'^2] of the rescaled input x' = x / s of a 2-D weight."""
        c = self.stat.get(name)
        if c is None:
            return None
        s = self.cols.get(name)
        return c if s is None else c / np.square(s.astype(np.float64))


def scales_from_stat(c: np.ndarray, alpha: float) -> np.ndarray:
    """s = (c / geomean(c))^alpha, with c floored so silent channels stay finite."""
    c = np.asarray(c, np.float64)
    m = float(c.mean())
    if not np.isfinite(m) or m <= 0:
        return np.ones_like(c)
    c = np.maximum(c, 1e-6 * m)
    s = np.exp(alpha * (np.log(c) - np.log(c).mean()))
    return np.clip(s, 1.0 / S_CLAMP, S_CLAMP)


def _hparam(kv: dict, arch: str, key: str, layer: int, default=None):
    v = kv.get(f"{arch}.{key}", default)
    if isinstance(v, (list, tuple, np.ndarray)):
        v = v[layer]
    return None if v is None else int(v)


def plan_rescale(arch: str, shapes: dict[str, tuple[int, ...]], kv: dict,
                 load_vector: Callable[[str], np.ndarray],
                 imatrix: dict[str, np.ndarray] | None, alpha: float,
                 source: str = "model", no_fold=()) -> RescalePlan:
    """Build the rescaling of a GGUF model.

    shapes: numpy shape (rows, cols) of each tensor; kv: metadata values;
    load_vector(name): a 1-D tensor as float32 (norm weights, for the proxy);
    imatrix: {weight: E[x^2]} or None for the weight-only proxy;
    no_fold: names of FOLD_KEYS left out (their consumer keeps its input scale)."""
    if arch not in SUPPORTED_ARCHS:
        raise GGZipError(f"{source}: unknown architecture {arch!r} (ggzip convert knows "
                         f"{', '.join(sorted(SUPPORTED_ARCHS))})")
    bad = sorted(set(no_fold) - set(FOLD_KEYS))
    if bad:
        raise GGZipError(f"--no-fold {','.join(bad)}: unknown fold (known: "
                         f"{', '.join(FOLD_KEYS)})")
    plan = RescalePlan(folded={name: False for name in FOLD_KEYS})
    n_layer = kv.get(f"{arch}.block_count")
    if n_layer is None:
        raise GGZipError(f"{source}: missing metadata {arch}.block_count")
    n_layer = int(n_layer)

    def stat_of(name):
        if imatrix is None or name not in imatrix:
            return None
        c = imatrix[name]
        if c.shape != (shapes[name][-1],):
            raise GGZipError(f"{source}: imatrix entry {name!r} has {c.size} columns, "
                             f"tensor has {shapes[name][-1]}")
        return c

    for name, shp in shapes.items():
        if len(shp) == 2:
            c = stat_of(name)
            if c is not None:
                plan.stat[name] = c

    def fold_norm(norm: str, consumers: list[str]):
        cons = [c for c in consumers if c in shapes]
        if norm not in shapes or not cons:
            return
        n = shapes[norm][0]
        for c in cons:
            if shapes[c][-1] != n:
                raise GGZipError(f"{source}: tensor {c!r} has {shapes[c][-1]} columns but "
                                 f"{norm!r} has {n} values: shapes do not fit")
        if alpha == 0:
            return
        stats = [plan.stat[c] for c in cons if c in plan.stat]
        if stats:
            c = np.mean(stats, axis=0)
        elif imatrix is None:
            # proxy: x_j = normalized_j * w_j, so E[x_j^2] ~ w_j^2
            c = np.square(load_vector(norm).astype(np.float64))
            for k in cons:
                plan.stat[k] = c
        else:
            plan.notes.append(f"{norm}: no imatrix entry for {cons[0]}, not rescaled")
            return
        s = scales_from_stat(c, alpha)
        plan.divide[norm] = s
        if norm.endswith(".weight") and norm[:-7] + ".bias" in shapes:
            plan.divide[norm[:-7] + ".bias"] = s
        for k in cons:
            plan.cols[k] = s

    def fold_rows(producer: str, consumer: str):
        if producer not in shapes or consumer not in shapes:
            return
        rows, cols = shapes[producer][0], shapes[consumer][-1]
        if cols != rows:
            raise GGZipError(f"{source}: tensor {consumer!r} has {cols} columns but "
                             f"{producer!r} has {rows} rows: shapes do not fit")
        c = plan.stat.get(consumer)
        if alpha == 0 or c is None:
            return          # the proxy has nothing to say about these inputs
        s = scales_from_stat(c, alpha)
        plan.divide[producer] = s
        bias = producer[:-7] + ".bias"
        if bias in shapes:
            plan.divide[bias] = s
        plan.cols[consumer] = s

    def fold_v(il: int):
        v, o = f"blk.{il}.attn_v.weight", f"blk.{il}.attn_output.weight"
        if v not in shapes or o not in shapes:
            return
        n_head = _hparam(kv, arch, "attention.head_count", il)
        n_kv = _hparam(kv, arch, "attention.head_count_kv", il, n_head)
        if not n_head or not n_kv or n_head % n_kv:
            raise GGZipError(f"{source}: bad head counts {n_head}/{n_kv} in layer {il}")
        gqa = n_head // n_kv
        rows, cols = shapes[v][0], shapes[o][-1]
        if rows % n_kv or cols != rows * gqa:
            raise GGZipError(f"{source}: tensor {o!r} has {cols} columns but {v!r} has "
                             f"{rows} rows for {n_head} query / {n_kv} KV heads: "
                             "shapes do not fit")
        c = plan.stat.get(o)
        if alpha == 0 or c is None or "v" in no_fold:
            return
        hd = rows // n_kv
        # c[(h, d)] with h = g*gqa + r: average over the r of each KV head g
        c_kv = c.reshape(n_kv, gqa, hd).mean(axis=1).reshape(-1)
        s_v = scales_from_stat(c_kv, alpha)
        plan.divide[v] = s_v
        if f"blk.{il}.attn_v.bias" in shapes:
            plan.divide[f"blk.{il}.attn_v.bias"] = s_v
        plan.cols[o] = np.repeat(s_v.reshape(n_kv, 1, hd), gqa, axis=1).reshape(-1)
        plan.folded["v"] = True

    for il in range(n_layer):
        p = f"blk.{il}."
        if arch in NORM_FOLD_ARCHS:
            fold_norm(p + "attn_norm.weight",
                      [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight",
                       p + "attn_qkv.weight"])
            fold_norm(p + "ffn_norm.weight", [p + "ffn_gate.weight", p + "ffn_up.weight"])
        if arch in GATED_FFN_ARCHS and p + "ffn_gate.weight" in shapes:
            fold_rows(p + "ffn_up.weight", p + "ffn_down.weight")
        fold_v(il)
    if arch in NORM_FOLD_ARCHS and "output.weight" in shapes and "output" not in no_fold \
            and "dense_2.weight" not in shapes:
        fold_norm("output_norm.weight", ["output.weight"])
        plan.folded["output"] = "output_norm.weight" in plan.divide
    return plan
