"""Small GGUF models with random weights that llama.cpp loads, for checks of the
fold of 1/s on architectures whose real models are not installable here.

Each has 2 layers, n_embd 128, 4 query heads sharing 2 KV heads (GQA: the rule
that heads sharing a KV head get equal s is exercised), an untied output.weight
(the output_norm -> output fold runs) and the arch's own extras: qwen2's q/k/v
biases, qwen3's and gemma3's per-head q/k norms, gemma3's post-norms.  The
tokenizer is a minimal GPT-2 byte-level BPE (256 byte tokens, a few merges, one
end-of-text token): llama.cpp's vocabulary loader does not depend on the
architecture, and a 49k-token vocabulary copied from a real model would cost
gguf-py's reader seconds at every read."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import gguf

TINY_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_LAYER = 128, 4, 2, 32, 256, 2
TINY_SWA = 8        # gemma-embedding's (symmetric) sliding window in write_tiny


def _copy_fields(w: gguf.GGUFWriter, reader: gguf.GGUFReader, keep) -> None:
    for k, f in reader.fields.items():
        if k.startswith("GGUF.") or not keep(k):
            continue
        typ = f.types[0]
        w.add_key_value(k, f.contents(), typ,
                        sub_type=f.types[-1] if typ == gguf.GGUFValueType.ARRAY else None)


def _write(w: gguf.GGUFWriter, tensors: dict) -> None:
    for name, a in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(a, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_weights(arch: str, n_vocab: int, seed: int = 0) -> dict:
    """{GGUF name: float32 array (numpy layout, rows = outputs)}."""
    rng = np.random.default_rng(seed)

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        # positive and spread over a decade: Gemma GGUFs store 1 + w, values > 0
        return np.exp(rng.uniform(-1.2, 1.2, n)).astype(np.float32)

    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    t = {"token_embd.weight": rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32),
         "output_norm.weight": norm(N_EMBD)}
    if arch != "gemma-embedding":           # an encoder: no head
        t["output.weight"] = mat(n_vocab, N_EMBD, 4.0)
    for il in range(N_LAYER):
        p = f"blk.{il}."
        t.update({p + "attn_norm.weight": norm(N_EMBD), p + "attn_q.weight": mat(q, N_EMBD),
                  p + "attn_k.weight": mat(kv, N_EMBD), p + "attn_v.weight": mat(kv, N_EMBD),
                  p + "attn_output.weight": mat(N_EMBD, q), p + "ffn_norm.weight": norm(N_EMBD),
                  p + "ffn_gate.weight": mat(N_FF, N_EMBD), p + "ffn_up.weight": mat(N_FF, N_EMBD),
                  p + "ffn_down.weight": mat(N_EMBD, N_FF)})
        if arch == "qwen2":
            for n, rows in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                t[p + n + ".bias"] = (0.5 * rng.standard_normal(rows)).astype(np.float32)
        if arch in ("qwen3", "gemma3", "gemma-embedding"):
            t[p + "attn_q_norm.weight"] = norm(HEAD_DIM)
            t[p + "attn_k_norm.weight"] = norm(HEAD_DIM)
        if arch in ("gemma3", "gemma-embedding"):
            t[p + "post_attention_norm.weight"] = norm(N_EMBD)
            t[p + "post_ffw_norm.weight"] = norm(N_EMBD)
    return t


_MERGES = ["Ġ t", "h e", "Ġ a", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t",
           "e n", "Ġ w", "o r", "e s", "Ġ o", "i t"]


def _byte_chars() -> list:
    """GPT-2's printable stand-in for each byte value (byte-level BPE)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def add_tiny_vocab(w: gguf.GGUFWriter) -> int:
    """A minimal valid GPT-2 BPE vocabulary; returns its size."""
    tokens = _byte_chars() + [m.replace(" ", "") for m in _MERGES] + ["<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_add_bos_token(False)
    return len(tokens)


def write_tiny(arch: str, out: Path, seed: int = 0) -> dict:
    """A tiny random ARCH model as a F32 GGUF at OUT; returns its weights."""
    w = gguf.GGUFWriter(out, arch)
    w.add_name(f"tiny-{arch}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(512)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "gemma-embedding":   # layer 0 windowed (4 tokens either way), layer 1 global
        w.add_uint32(f"{arch}.attention.sliding_window", TINY_SWA)
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", 2)
        w.add_pooling_type(gguf.PoolingType.NONE)
    t = tiny_weights(arch, add_tiny_vocab(w), seed)
    _write(w, t)
    return t


def _write_imatrix(path: Path, stats: dict) -> None:
    """llama-imatrix's GGUF layout, one chunk: {weight: E[x^2] per column}."""
    wr = gguf.GGUFWriter(path, "imatrix")
    wr.add_type("imatrix")
    wr.add_array("imatrix.datasets", ["tinymodels"])
    wr.add_uint32("imatrix.chunk_count", 1)
    wr.add_uint32("imatrix.chunk_size", 1)
    for name, c in stats.items():
        wr.add_tensor(name + ".in_sum2", np.asarray(c, np.float32).reshape(1, -1))
        wr.add_tensor(name + ".counts", np.ones((1, 1), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def _weights(shapes: dict):
    return [(n, shp) for n, shp in shapes.items() if len(shp) == 2 and n != "token_embd.weight"]


def write_random_imatrix(path: Path, shapes: dict, seed: int = 1) -> None:
    """An imatrix whose E[x^2] per input column is log-uniform over 4 decades
    for every 2-D weight but the token embedding: with alpha 0.5, s spans 100x,
    so a fold done wrong cannot hide in the rounding."""
    rng = np.random.default_rng(seed)
    _write_imatrix(path, {n: 10.0 ** rng.uniform(-2, 2, shp[1]) for n, shp in _weights(shapes)})


def write_pow2_imatrix(path: Path, shapes: dict, head_dim: int, seed: int = 2) -> None:
    """An imatrix that makes convert's s (alpha 0.5) exact powers of two, 1/8 to
    8, so that W diag(s) and g / s are exact in float and the folded model must
    compute bit for bit what the unfolded one does: E[x^2] = 4^k with the k of
    each input width balanced (geometric mean 1, the normalisation of
    scales_from_stat), the same for every weight of that width (the norm fold
    averages its consumers), and for attn_output a function of the position in
    the head only (the V fold averages over the query heads of a KV head)."""
    rng = np.random.default_rng(seed)

    def balanced(n):
        k = rng.integers(-3, 4, n // 2)
        return rng.permutation(np.concatenate([k, -k, np.zeros(n % 2, np.int64)]))
    by_width, stats = {}, {}
    for name, shp in _weights(shapes):
        if name.endswith("attn_output.weight"):
            if shp[1] % head_dim:
                raise ValueError(f"{name}: {shp[1]} columns, not whole heads of {head_dim}")
            k = np.tile(balanced(head_dim), shp[1] // head_dim)
        else:
            k = by_width.setdefault(shp[1], balanced(shp[1]))
        stats[name] = 4.0 ** k
    _write_imatrix(path, stats)


def rewrite_gguf(src: Path, out: Path, replace: dict) -> None:
    """A plain F32 GGUF SRC written again at OUT with some tensors replaced
    ({name: float32 array}); every metadata pair is kept."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
    _copy_fields(w, r, lambda k: k != "general.architecture")
    tensors = {}
    for t in r.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{src}: tensor {t.name!r} is {t.tensor_type.name}, not F32")
        shp = tuple(int(x) for x in reversed(t.shape))
        tensors[t.name] = replace.get(t.name, np.asarray(t.data).reshape(shp))
    _write(w, tensors)


def write_dequantized(src: Path, out: Path) -> None:
    """SRC with every tensor dequantized to F32 by gguf-py (as convert does),
    metadata copied verbatim: the unfolded float twin of a quantized model.
    Read with ggzip's own GGUF parser: gguf-py's takes a minute over the
    262k-token vocabulary of Gemma 3."""
    from ggzip.container import GGZipReader, GGZipWriter
    with GGZipReader(src) as r:
        w = GGZipWriter(out, plain=True)
        try:
            for k, kv in r.header.kvs.items():
                w.add_raw_kv(k, r.header.raw(kv.start, kv.end))
            for name, t in r.tensors.items():
                a = gguf.quants.dequantize(r.array(name), gguf.GGMLQuantizationType(t.ggml_type))
                w.add_tensor(name, gguf.GGMLQuantizationType.F32, t.ne,
                             np.ascontiguousarray(a, np.float32).reshape(t.shape))
            w.close()
        except BaseException:
            w.abort()
            raise


def patched_llama_cpp():
    """llama_cpp with the patched libraries of scripts/build_llama.sh, or a skip saying why not."""
    import pytest
    from ggzip.errors import GGZipError
    from ggzip.run.llama import check_patched_llama_cpp
    pytest.importorskip("llama_cpp")
    try:
        return check_patched_llama_cpp()[0]
    except GGZipError as e:
        pytest.skip(str(e))
