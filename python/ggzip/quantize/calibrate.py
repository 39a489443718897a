"""Activation statistics computed by ggzip itself, without llama.cpp: a numpy
forward pass of a llama / qwen2 / qwen3 / gemma3 / gemma-embedding GGUF over a
user text, recording E[x^2] of the input of every matrix exactly as
llama-imatrix does (same tensor names, same meaning), so `convert --calib-text`
works before llama.cpp is built.

It follows llama.cpp's graph for these architectures: RMSNorm times the stored
weight, rope on adjacent pairs (llama, whose converter permutes Q/K for it) or
on halves (qwen2/qwen3, NEOX), optional rope_freqs factors, GQA where query head
h reads KV head h // (n_head / n_kv), qwen2 Q/K/V biases, qwen3 per-head Q/K
RMSNorm, SwiGLU.  gemma3 (llama.cpp's src/models/gemma3.cpp): embeddings times
sqrt(n_embd), per-head Q/K RMSNorm, NEOX rope with rope.freq_base on global
layers and rope.freq_base_swa (10000 by default) on sliding-window ones (every
layer but each sliding_window_pattern-th, 6 by default, unless the GGUF lists the
pattern per layer), Q scaled by 1/sqrt(head dim), post-attention and post-FFN
RMSNorms, GELU (tanh) gate times up, final logit softcapping when the GGUF sets
it.  gemma-embedding (src/models/gemma-embedding.cpp) is gemma3 without the
causal mask: every token sees every other, within n_swa / 2 positions either
way on sliding-window layers; its token embedding is an input lookup only (no
head), so it has neither logits nor a head covariance.
Text is cut into independent chunks of n_ctx tokens like llama-imatrix's.
The pass runs layer by layer over all chunks, so only one layer's weights are in
memory at a time; a probe (quantize/sparsity.py) may watch the activations.

The tokenizer is the model's byte-level BPE (tokenizer.ggml.model "gpt2":
vocabulary and merges from the GGUF); the pre-tokenizer is GPT-2's split rule
(letters, digits, other symbols, spaces), which models with their own split
rules (smollm, qwen2) refine only at the margins - close enough for statistics.
Other tokenizers (gemma3's SentencePiece-style "llama") go through llama.cpp's own
tokenizer in llama-cpp-python, vocabulary only (tokenize()).
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from ..errors import GGZipError

CALIB_ARCHS = {"llama": "norm", "qwen2": "neox", "qwen3": "neox",   # arch -> rope mode
               "gemma3": "neox", "gemma-embedding": "neox"}
GEMMA_ARCHS = ("gemma3", "gemma-embedding")
ENCODER_ARCHS = ("gemma-embedding",)     # no next-token head: a pooled sentence vector
GEMMA3_SWA_PATTERN = 6      # llama.cpp's default: layers il % 6 < 5 use the sliding window
GEMMA3_SWA_BASE = 10000.0   # llama.cpp's default rope.freq_base_swa

# GPT-2's split: contractions, optional space + letters / digits / other symbols,
# whitespace runs.  Python's re has no \p{L}: [^\W\d_] is "letters" here.
_SPLIT = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map of byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class BPETokenizer:
    """Byte-level BPE from a GGUF's tokenizer.ggml.{tokens,merges}."""

    def __init__(self, kv: dict, source: str = "model"):
        if kv.get("tokenizer.ggml.model") != "gpt2":
            raise GGZipError(f"{source}: tokenizer {kv.get('tokenizer.ggml.model')!r} is not "
                             "byte-level BPE; compute an imatrix with llama-imatrix instead")
        tokens = kv["tokenizer.ggml.tokens"]
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {}
        for r, m in enumerate(kv.get("tokenizer.ggml.merges", [])):
            a, _, b = m.partition(" ")
            self.ranks[(a, b)] = r
        self.b2u = _byte_to_unicode()
        self.bos = kv.get("tokenizer.ggml.bos_token_id") \
            if kv.get("tokenizer.ggml.add_bos_token") else None
        self._bpe = lru_cache(maxsize=1 << 16)(self._bpe_uncached)

    def _bpe_uncached(self, word: str) -> tuple[int, ...]:
        parts = list(word)
        while len(parts) > 1:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            pair = (parts[at], parts[at + 1])
            merged, i = [], 0
            while i < len(parts):     # merge every occurrence, left to right
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = []
        for p in parts:
            if p in self.vocab:
                ids.append(self.vocab[p])
            else:   # no merge path to this piece: spell it by single bytes
                ids.extend(self.vocab[c] for c in p if c in self.vocab)
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        ids = [] if self.bos is None else [int(self.bos)]
        for piece in _SPLIT.findall(text):
            ids.extend(self._bpe("".join(self.b2u[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids) -> str:
        u2b = {u: b for b, u in self.b2u.items()}
        inv = {i: t for t, i in self.vocab.items()}
        return bytes(u2b[c] for i in ids for c in inv[int(i)]).decode("utf-8", "replace")


def _rope(t: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: str) -> np.ndarray:
    """t: (T, heads, hd); cos/sin: (T, 1, hd/2)."""
    out = np.empty_like(t)
    if mode == "norm":
        a, b = t[..., 0::2], t[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    else:
        h = t.shape[-1] // 2
        a, b = t[..., :h], t[..., h:]
        out[..., :h] = a * cos - b * sin
        out[..., h:] = a * sin + b * cos
    return out


def random_text(kv: dict, n_tokens: int, seed: int = 0) -> str:
    """A text of about n_tokens tokens drawn uniformly (seeded) from the
    vocabulary's normal tokens (tokenizer.ggml.token_type 1), spelt out:
    byte-level BPE through GPT-2's byte map, SentencePiece with its word
    marker as a space.  Data-free calibration: a model's outlier input
    channels show on any tokens (measured: an imatrix of 6000 random tokens
    recovers nearly all of a real text's gain, SmolLM2 at 3.97 bpw KL
    divergence 0.122 against 0.119, 0.246 without statistics)."""
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv.get("tokenizer.ggml.token_type")
    ok = np.arange(len(tokens)) if types is None else np.flatnonzero(np.asarray(types) == 1)
    if ok.size == 0:
        raise GGZipError("the vocabulary has no normal tokens to draw from")
    ids = np.random.default_rng(seed).choice(ok, n_tokens)
    if kv.get("tokenizer.ggml.model") == "gpt2":
        u2b = {u: b for b, u in _byte_to_unicode().items()}
        return bytes(u2b[c] for i in ids for c in tokens[i] if c in u2b).decode("utf-8", "replace")
    return "".join(tokens[i] for i in ids).replace("\u2581", " ")


def tokenize(model, text: str) -> list[int]:
    """Token ids of a text for MODEL (a GGUFModel): byte-level BPE read from the
    GGUF (BPETokenizer), else llama.cpp's tokenizer through llama-cpp-python,
    loading the vocabulary only, with the model's BOS."""
    if model.kv.get("tokenizer.ggml.model") == "gpt2":
        return BPETokenizer(model.kv, str(model.path)).encode(text)
    try:
        import llama_cpp
    except ImportError:
        raise GGZipError(f"{model.path}: tokenizer {model.kv.get('tokenizer.ggml.model')!r} is "
                         "not byte-level BPE: ggzip's own calibration tokenizes it with "
                         "llama-cpp-python (pip install llama-cpp-python), which is not "
                         "installed") from None
    try:
        llm = llama_cpp.Llama(model_path=str(model.path), vocab_only=True, verbose=False)
    except Exception as e:     # llama-cpp-python raises ValueError, RuntimeError, ...
        raise GGZipError(f"{model.path}: llama-cpp-python cannot load the vocabulary: {e}") from None
    try:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=True))
    finally:
        llm.close()


def activation_stats(model, ids, n_ctx: int = 512, progress=None,
                     probe=None, cov: dict | None = None) -> dict[str, np.ndarray]:
    """{weight name: E[x^2] per input column} of a model of CALIB_ARCHS on
    token ids.  model: has .arch, .kv, .tensors and .float32(name) (GGUFModel).
    probe: None, or an object whose see(layer, what, array) is given, in each layer
    and chunk, the input of attn_q ("attn_q", tokens x n_embd), the input of
    attn_output ("attn_output"), act(gate x) ("ffn_act", tokens x n_ff) and up x
    ("ffn_up"), and whose layer_done(layer) is called when every chunk has passed
    that layer.  cov: None, or a dict that gets {weight name: E[x x^T] of its input,
    float64 cols x cols}, the second moments error feedback needs
    (quantize/feedback.py); weights sharing an input (attn_q/k/v, ffn_gate/up) share
    one array, and the output head (or the tied token embedding) gets the final
    normed hidden state's.
    """
    return _run(model, ids, n_ctx, progress, want=None, probe=probe, cov=cov)[0]


def logits(model, ids, n_ctx: int = 512) -> np.ndarray:
    """Next-token logits (tokens x vocab, float32) of each n_ctx chunk of ids:
    to compare a quantized model with its float original."""
    return _run(model, ids, n_ctx, None, want="logits")[1]


def hidden(model, ids, n_ctx: int = 512) -> np.ndarray:
    """The final hidden states after output_norm (tokens x n_embd, float32) of
    each n_ctx chunk of ids: llama.cpp's per-token embeddings (pooling none)."""
    return _run(model, ids, n_ctx, None, want="hidden")[1]


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """ggml_gelu: the tanh approximation of GELU."""
    return 0.5 * x * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x ** 3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _gemma3_swa_layers(kv: dict, L: int, arch: str = "gemma3") -> list[bool]:
    """Which layers of a gemma3 / gemma-embedding model use the sliding window
    (llama.cpp's llama_hparams::set_swa_pattern, dense_first false)."""
    if int(kv.get(f"{arch}.attention.sliding_window", 0) or 0) <= 0:
        return [False] * L
    pat = kv.get(f"{arch}.attention.sliding_window_pattern", GEMMA3_SWA_PATTERN)
    if isinstance(pat, (list, tuple, np.ndarray)):      # one bool per layer
        return [bool(v) for v in pat][:L]
    n = int(pat)
    return [n == 0 or il % n < n - 1 for il in range(L)]


class _Graph:
    """llama.cpp's graph of a CALIB_ARCHS model, one layer at a time: its
    hyperparameters, rope tables and masks, and layer(), the forward of one block
    over one chunk (shared by the statistics pass here and the backward pass of
    quantize/fisher.py)."""

    def __init__(self, model):
        arch = model.arch
        if arch not in CALIB_ARCHS:
            raise GGZipError(f"{model.path}: ggzip computes statistics itself only for "
                             f"{', '.join(sorted(CALIB_ARCHS))}; for {arch!r} build llama-imatrix "
                             "(scripts/build_llama.sh) or pass --imatrix")
        self.model, self.arch, self.mode = model, arch, CALIB_ARCHS[arch]
        kv = self.kv = model.kv
        self.gemma = gemma = arch in GEMMA_ARCHS
        self.causal = arch not in ENCODER_ARCHS
        hp = self.hp
        self.L = L = int(hp("block_count"))
        self.n_head = int(hp("attention.head_count"))
        self.n_kv = int(hp("attention.head_count_kv", self.n_head))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        base = float(hp("rope.freq_base", 10000.0))
        self.D = D = int(hp("embedding_length"))
        hd = self.hd = int(kv.get(f"{arch}.attention.key_length", D // self.n_head))
        n_rot = int(kv.get(f"{arch}.rope.dimension_count", hd))
        if n_rot != hd:
            raise GGZipError(f"{model.path}: partial rope ({n_rot} of {hd}) is not supported "
                             "by ggzip's own calibration; use --imatrix")
        # linear rope scaling divides positions by the factor (gemma3's sliding-window
        # layers keep rope_freq_scale_train_swa = 1); other scalings (yarn) are left
        # out, an approximation for statistics over short chunks
        self.pos_scale = 1.0 / float(kv.get(f"{arch}.rope.scaling.factor", 1.0) or 1.0) \
            if kv.get(f"{arch}.rope.scaling.type") == "linear" else 1.0
        self.swa = _gemma3_swa_layers(kv, L, arch) if gemma else [False] * L
        self.n_swa = int(kv.get(f"{arch}.attention.sliding_window", 0) or 0) if gemma else 0
        # llama.cpp: 1/sqrt(head dim), but n_embd / n_head for Gemma-3-27B (62 layers)
        self.q_scale = np.float32(1.0 / np.sqrt(D / self.n_head if gemma and L == 62 else hd))
        self.inv_global = self._inv_freq(base)
        self.inv_swa = self._inv_freq(float(kv.get(f"{arch}.rope.freq_base_swa", GEMMA3_SWA_BASE))) \
            if gemma else None
        self.act = _gelu_tanh if gemma else _silu
        self.head_name = "output.weight" if "output.weight" in model.tensors else "token_embd.weight"
        self._head = None

    def hp(self, key, default=None):
        v = self.kv.get(f"{self.arch}.{key}", default)
        if v is None:
            raise GGZipError(f"{self.model.path}: missing metadata {self.arch}.{key}")
        return v

    def _inv_freq(self, b):
        inv = b ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        if "rope_freqs.weight" in self.model.tensors:
            inv = inv / self.model.float32("rope_freqs.weight").astype(np.float64)
        return inv

    def embed(self, chunks) -> list[np.ndarray]:
        """The residual stream entering layer 0, one array per chunk."""
        embd = self.model.float32("token_embd.weight")
        xs = [embd[c].astype(np.float32) for c in chunks]
        del embd
        if self.gemma:
            xs = [x * np.float32(np.sqrt(self.D)) for x in xs]
        return xs

    def weights(self, il: int) -> dict[str, np.ndarray]:
        p = f"blk.{il}."
        return {n[len(p):]: self.model.float32(n) for n in self.model.tensors if n.startswith(p)}

    def rms(self, v, g):
        return (v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + self.eps)) * g

    def rope_tables(self, il: int, T: int):
        """cos, sin (T, 1, hd/2) of layer il's rope."""
        inv = self.inv_swa if self.swa[il] else self.inv_global
        ang = np.arange(T)[:, None] * (self.pos_scale if not self.swa[il] else 1.0) * inv[None, :]
        return np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]

    def mask(self, il: int, T: int) -> np.ndarray:
        """(T, T) True where query t may not see key s."""
        if self.causal:
            mask = np.triu(np.ones((T, T), bool), 1)
            if self.swa[il]:     # llama.cpp masks key p0 for query p1 when p1 - p0 >= n_swa
                mask |= np.tril(np.ones((T, T), bool), -self.n_swa)
        else:           # symmetric window: masked when |p1 - p0| > n_swa / 2
            mask = np.zeros((T, T), bool)
            if self.swa[il]:
                half = self.n_swa // 2
                ones = np.ones((T, T), bool)
                mask = np.triu(ones, half + 1) | np.tril(ones, -half - 1)
        return mask

    def layer(self, il, W, x, acc=None, see=None, cache=None):
        """Block il (weights W, from weights()) on one chunk's residual stream x
        (T, D); returns the stream after it.  acc(names, v): called with the input
        v shared by the weights names; see(what, v): the probe's activations;
        cache: None, or a dict that gets every intermediate the backward needs."""
        p = f"blk.{il}."
        T = x.shape[0]
        gqa = self.n_head // self.n_kv
        cos, sin = self.rope_tables(il, T)
        rms, mode = self.rms, self.mode
        acc = acc or (lambda names, v: None)
        see = see or (lambda what, v: None)
        h = rms(x, W["attn_norm.weight"])
        acc([p + n + ".weight" for n in ("attn_q", "attn_k", "attn_v")], h)
        see("attn_q", h)

        def proj(n, heads):
            y = h @ W[n + ".weight"].T
            if n + ".bias" in W:
                y = y + W[n + ".bias"]
            y = y.reshape(T, heads, -1)
            if cache is not None:
                cache[n] = y
            if n + "_norm.weight" in W:       # qwen3, gemma3: per-head RMSNorm of Q and K
                y = rms(y, W[n + "_norm.weight"])
            return y
        q = _rope(proj("attn_q", self.n_head), cos, sin, mode)
        k = _rope(proj("attn_k", self.n_kv), cos, sin, mode)
        v = proj("attn_v", self.n_kv)
        k = np.repeat(k, gqa, axis=1)
        v = np.repeat(v, gqa, axis=1)
        # batched matmuls (BLAS), not einsum: the attention is most of a layer's time
        a = np.matmul(q.transpose(1, 0, 2), k.transpose(1, 2, 0)) * self.q_scale
        a[:, self.mask(il, T)] = -np.inf
        a = np.exp(a - a.max(axis=-1, keepdims=True))
        a /= a.sum(axis=-1, keepdims=True)
        o = np.matmul(a, v.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(T, -1)
        acc([p + "attn_output.weight"], o)
        see("attn_output", o)
        oy = o @ W["attn_output.weight"].T
        o = rms(oy, W["post_attention_norm.weight"]) if self.gemma else oy
        x1 = x + o
        h2 = rms(x1, W["ffn_norm.weight"])
        acc([p + "ffn_gate.weight", p + "ffn_up.weight"], h2)
        gy = h2 @ W["ffn_gate.weight"].T
        g = self.act(gy)
        u = h2 @ W["ffn_up.weight"].T
        see("ffn_act", g)
        see("ffn_up", u)
        m = g * u
        acc([p + "ffn_down.weight"], m)
        fy = m @ W["ffn_down.weight"].T
        f = rms(fy, W["post_ffw_norm.weight"]) if self.gemma else fy
        if cache is not None:
            cache.update(x=x, h=h, q=q, k=k, v=v, a=a, oy=oy, x1=x1, h2=h2, gy=gy, g=g, u=u,
                         fy=fy, cos=cos, sin=sin)
        return x1 + f

    @property
    def softcap(self) -> float:
        return float(self.kv.get(f"{self.arch}.final_logit_softcapping", 0.0) or 0.0) \
            if self.gemma else 0.0

    def head(self) -> np.ndarray:
        if self._head is None:
            self._head = self.model.float32(self.head_name)
        return self._head

    def logits(self, h: np.ndarray) -> np.ndarray:
        """Next-token logits of final normed hidden states h, softcapped when the
        GGUF says so."""
        out = h @ self.head().T
        if self.softcap:
            out = np.tanh(out / self.softcap) * self.softcap
        return out

    def chunks(self, ids, n_ctx: int) -> list[np.ndarray]:
        ids = np.asarray(ids, np.int64)
        chunks = [ids[i:i + n_ctx] for i in range(0, len(ids), n_ctx)]
        chunks = [c for c in chunks if len(c) >= 8]
        if not chunks:
            raise GGZipError(f"{self.model.path}: calibration text too short ({len(ids)} tokens)")
        return chunks


def _run(model, ids, n_ctx, progress, want, probe=None, cov=None):
    """(E[x^2] of every weight's input, the output `want` names: "logits",
    "hidden" or None); see activation_stats."""
    G = _Graph(model)
    if want == "logits" and not G.causal:
        raise GGZipError(f"{model.path}: {G.arch} is an encoder: no next-token logits")
    chunks = G.chunks(ids, n_ctx)
    xs = G.embed(chunks)
    sums: dict[str, np.ndarray] = {}
    count = sum(len(c) for c in chunks)

    def acc(names, v):
        """E[x^2] (and with cov, E[x x^T]) of the input v shared by the weights names."""
        s = np.einsum("ij,ij->j", v, v, dtype=np.float64)
        for name in names:
            sums[name] = sums.get(name, 0) + s
        if cov is not None:
            vv = v.T.astype(np.float64) @ v.astype(np.float64)
            if names[0] in cov:
                cov[names[0]] += vv         # the others alias the same array
            else:
                for name in names:
                    cov[name] = vv

    for il in range(G.L):
        W = G.weights(il)
        see = None if probe is None else (lambda what, v, il=il: probe.see(il, what, v))
        for ci, x in enumerate(xs):
            xs[ci] = G.layer(il, W, x, acc, see)
        if probe is not None:
            probe.layer_done(il)
        if progress is not None:
            progress(il + 1, G.L)
    out = None
    if (cov is not None and G.causal) or want:
        g = model.float32("output_norm.weight")
        hs = [G.rms(x, g) for x in xs]        # the output head's input
        if cov is not None and G.causal:      # an encoder has no head
            for h in hs:
                acc([G.head_name], h)
    if want == "hidden":
        out = np.concatenate(hs)
    elif want == "logits":
        out = np.concatenate([G.logits(h) for h in hs])
    if cov is not None:
        for a in {id(a): a for a in cov.values()}.values():
            a /= count
    return {n: s / count for n, s in sums.items()}, out
