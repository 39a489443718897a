"""The patched llama.cpp (patches/, scripts/build_llama.sh) on real models.

A lossless ggzip GGUF of SmolLM2 Q8_0 must give the same logits (llama-cpp-python)
and the same perplexity (llama-perplexity) as its plain Q8_0 twin; a damaged frame
must fail the load with an error naming the tensor; plain GGUFs load as before.
The frames decode on the tool's threads (-t, n_threads) or the CPUs of the affinity
mask; GGZIP_PAGES picks the page policy; the ggzip.fold.* keys refuse embeddings or
warn about a quantized V cache.
Skips, saying why, when the patched build or the model is absent."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import llama_tool
from tinymodels import TINY_ARCHS

pytestmark = [pytest.mark.llama, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "data" / "declaration.txt"
tool = llama_tool


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def q8_0(smollm2_q8_0) -> Path:
    return smollm2_q8_0


@pytest.fixture(scope="module")
def ggz(smollm2_ggz) -> Path:
    return smollm2_ggz


def ggzip_tensors(path: Path) -> list[str]:
    import gguf
    f = gguf.GGUFReader(path).fields.get("ggzip.tensor_names")
    return list(f.contents()) if f else []


def perplexity(model: Path, *extra) -> str:
    r = run([tool("llama-perplexity"), "-m", model, "-f", TEXT, "-c", "128", "-b", "128", "-t", "2", *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"Final estimate: PPL = ([0-9.]+ \+/- [0-9.]+)", r.stdout + r.stderr)
    assert m, (r.stdout + r.stderr)[-3000:]
    return m.group(1)


def test_ggzip_file_is_compressed(ggz, q8_0, tmp_path):
    names = ggzip_tensors(ggz)
    assert len(names) > 0
    assert ggz.stat().st_size < q8_0.stat().st_size
    from ggzip.container import decompress_file   # and it is lossless, byte for byte
    back = tmp_path / "back.gguf"
    decompress_file(ggz, back, progress=False)
    assert back.read_bytes() == q8_0.read_bytes()


@pytest.mark.parametrize("mode", ["mmap", "none", "dio"])
def test_same_perplexity(ggz, q8_0, mode):
    extra = ["--load-mode", mode]
    plain = perplexity(q8_0, *extra)
    assert perplexity(ggz, *extra) == plain


def test_background_decode(ggz):
    """With mmap (the default) a CPU-only load decodes the frames in the background
    (patch 0004); without mmap it decodes them at load_all_data (patch 0002)."""
    n = len(ggzip_tensors(ggz))
    for mode, expect in (("mmap", True), ("none", False)):
        r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "--chunks", "1",
                 "-t", "2", "--load-mode", mode, "-v"])
        assert r.returncode == 0, r.stderr[-3000:]
        started = re.search(r"ggzip: decoding (\d+) frames on \d+ threads?, \d+ of them in the background", r.stderr)
        assert bool(started) == expect, (mode, r.stderr[-3000:])
        if started:
            assert int(started.group(1)) == n


def test_tensor_override_decodes_at_load(ggz, q8_0):
    """With a tensor override the background image is not made (the tensor's buffer
    type is not known in advance): frames decode at load_all_data, same perplexity."""
    extra = ["--chunks", "2", "-ot", "token_embd.weight=CPU"]
    r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "-t", "2", "-v", *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "in the background" not in r.stderr
    assert perplexity(ggz, *extra) == perplexity(q8_0, *extra)


def test_failed_load_cancels_background_decode(ggz, tmp_path):
    """A load that fails after the background decode started (here: an unknown
    tokenizer, read while the frames decode) ends with llama.cpp's error, not a
    crash or a hang: the loader cancels the decode before freeing its buffers."""
    data = bytearray(ggz.read_bytes())
    key = b"tokenizer.ggml.model"
    at = data.index(key) + len(key)
    vlen = int.from_bytes(data[at + 4:at + 12], "little")  # value type u32, then the string's u64 length
    data[at + 12:at + 12 + vlen] = b"z" * vlen
    bad = tmp_path / "badvocab.gguf"
    bad.write_bytes(bytes(data))
    for _ in range(5):   # see test_corrupted_frame_names_tensor for the retries
        # --fit off: the memory-fit pass (no-alloc, no background decode) would fail first
        r = run([tool("llama-perplexity"), "-m", bad, "-f", TEXT, "-c", "128", "-t", "2", "--fit", "off", "-v"])
        if r.stderr.strip():
            break
    assert r.returncode > 0, r.stderr[-3000:]   # an error exit, not a signal
    assert "in the background" in r.stderr, r.stderr[-3000:]
    assert "unknown tokenizer" in r.stderr, r.stderr[-3000:]


def test_plain_gguf_still_loads(q8_0, smollm2_gguf):
    """Stock-format check: the original Q4_1 GGUF (no ggzip keys) loads and runs."""
    assert float(perplexity(smollm2_gguf).split()[0]) > 1.0


def test_corrupted_frame_names_tensor(ggz, tmp_path):
    import gguf
    r = gguf.GGUFReader(ggz)
    name = ggzip_tensors(ggz)[-1]
    t = next(t for t in r.tensors if t.name == name)
    data = bytearray(ggz.read_bytes())
    pos = int(t.data_offset) + int(t.n_bytes) // 2  # in the middle of its chunks
    data[pos] ^= 0x5A
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    # llama.cpp's asynchronous log (common/log.cpp) sometimes loses every line when
    # main returns on a load error (2 runs in 6 here): try again if stderr is empty
    for _ in range(5):
        r = run([tool("llama-perplexity"), "-m", bad, "-f", TEXT, "-c", "128", "-t", "2"])
        if r.stderr.strip():
            break
    assert r.returncode != 0
    assert re.search(rf"tensor '{re.escape(name)}': ggzip frame is damaged", r.stderr), r.stderr[-3000:]
    assert "Segmentation" not in r.stderr and r.returncode > 0  # an error, not a signal


def test_quantize_refuses_ggzip(ggz, tmp_path):
    r = run([tool("llama-quantize"), "--allow-requantize", ggz, tmp_path / "x.gguf", "Q8_0", "2"])
    assert r.returncode != 0
    assert "ggzip-compressed" in r.stderr + r.stdout


def _llama_cpp():
    from ggzip.errors import GGZipError
    from ggzip.run.llama import check_patched_llama_cpp
    try:
        return check_patched_llama_cpp()[0]
    except GGZipError as e:
        pytest.skip(str(e))


def _logits(llama_cpp, model: Path, tokens=None, keep=None, n_batch: int = 512, n_threads: int = 2):
    """Logits of every token; keep: the ggzip.keep override (None: none given)."""
    kv = {"ggzip.keep": keep} if keep is not None else None
    llm = llama_cpp.Llama(str(model), n_ctx=256, n_batch=n_batch, n_ubatch=n_batch, n_threads=n_threads,
                          n_threads_batch=n_threads, logits_all=True,
                          verbose=False, seed=0, kv_overrides=kv)
    if tokens is None:
        tokens = llm.tokenize(TEXT.read_text()[:600].encode())
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return tokens, out


def test_logits_bit_identical(ggz, q8_0):
    llama_cpp = _llama_cpp()
    tokens, plain = _logits(llama_cpp, q8_0)
    _, coded = _logits(llama_cpp, ggz, tokens)
    assert plain.shape == coded.shape and np.isfinite(plain).all()
    assert np.array_equal(plain.view(np.uint32), coded.view(np.uint32))


def test_run_llama_wrapper_error_on_damage(ggz, tmp_path):
    _llama_cpp()
    from ggzip.errors import GGZipError
    from ggzip.run import Llama
    bad = tmp_path / "bad.gguf"
    data = bytearray(ggz.read_bytes())
    data[-100] ^= 0xFF  # inside the last frame (compressed tensors come last)
    bad.write_bytes(bytes(data))
    with pytest.raises(GGZipError):
        Llama(bad, n_ctx=64, verbose=False)


# --- load threads (patch 0006) ---

DECODING = re.compile(r"ggzip: decoding (\d+) frames on (\d+) threads?")


def decode_threads(stderr: str) -> list[int]:
    """The thread counts of every 'ggzip: decoding N frames on T threads' line."""
    found = [int(m.group(2)) for m in DECODING.finditer(stderr)]
    assert found, stderr[-3000:]
    return found


@pytest.mark.parametrize("mode", ["mmap", "none"])
def test_load_threads_follow_t(ggz, mode):
    """-t reaches the loader (the kv override ggzip.load_threads, added by common):
    the frames decode on that many threads, in the background (mmap) or not."""
    for t in (1, 2):
        r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "--chunks", "1",
                 "-t", str(t), "--load-mode", mode, "-v"])
        assert r.returncode == 0, r.stderr[-3000:]
        assert set(decode_threads(r.stderr)) == {t}, (mode, t)


def test_llama_bench_load_threads(ggz):
    r = run([tool("llama-bench"), "-m", ggz, "-t", "1", "-p", "0", "-n", "1", "-r", "1", "-v"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(decode_threads(r.stderr)) == {1}


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter: llama.cpp logs to the process's stderr."""
    import sys
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "python")}, **kw)


def test_load_threads_affinity_and_n_threads(ggz):
    """Without n_threads the frames decode on the CPUs of the affinity mask (one here,
    whatever the machine has); the wrapper passes n_threads to the loader (two, on
    that one CPU: the count comes from n_threads, not from the mask)."""
    _llama_cpp()
    one_cpu = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
    r = _python(one_cpu + f"import llama_cpp; llama_cpp.Llama({str(ggz)!r}, n_ctx=64, verbose=True)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(decode_threads(r.stderr)) == {1}
    r = _python(one_cpu + f"from ggzip.run import Llama; Llama({str(ggz)!r}, n_ctx=64, n_threads=2, verbose=True)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(decode_threads(r.stderr)) == {2}


# --- page policy (patch 0005) ---

@pytest.mark.parametrize("pages", ["off", "huge", "probe"])
def test_page_policy_same_perplexity(ggz, q8_0, pages):
    """Each GGZIP_PAGES policy loads both files, with and without mmap, to the same result."""
    env = {**os.environ, "GGZIP_PAGES": pages}
    for mode in ("mmap", "none"):
        extra = ["--chunks", "1", "--load-mode", mode]
        r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "-t", "2", "-v", *extra],
                env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "GGZIP_PAGES" not in r.stderr   # no warning for a valid value
        plain = run([tool("llama-perplexity"), "-m", q8_0, "-f", TEXT, "-c", "128", "-b", "128", "-t", "2", *extra],
                    env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        ppl = re.compile(r"Final estimate: PPL = ([0-9.]+ \+/- [0-9.]+)")
        assert ppl.search(r.stdout + r.stderr).group(1) == ppl.search(plain.stdout + plain.stderr).group(1)


def test_page_policy_invalid_value_warns(ggz):
    r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "--chunks", "1", "-t", "2"],
            env={**os.environ, "GGZIP_PAGES": "sometimes"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "GGZIP_PAGES=sometimes is not one of off, huge, probe" in r.stderr, r.stderr[-3000:]


# --- header checks (patch 0002) ---

def _gguf_header(data: bytes, what: str):
    from ggzip.container import gguf_io
    return gguf_io.parse_header(data, what)


def test_shape_whose_size_overflows_is_refused(ggz, tmp_path):
    """Every dimension in range but their product past 2^63: an error naming the
    file and the tensor, not a wrapped size."""
    import struct
    from ggzip.constants import Keys
    data = bytearray(ggz.read_bytes())
    h = _gguf_header(bytes(data), str(ggz))
    names = h.value(Keys.TENSOR_NAMES)
    kv = h.kvs[Keys.TENSOR_SHAPES]
    values_at = kv.value_at + 4 + 8          # array: element type u32, count u64, then the u64 values
    assert len(h.value(Keys.TENSOR_SHAPES)) == 4 * len(names)
    struct.pack_into("<QQ", data, values_at + 8, 1 << 40, 1 << 40)   # ne1, ne2 of the first tensor
    bad = tmp_path / "overflow.gguf"
    bad.write_bytes(bytes(data))
    for _ in range(5):   # see test_corrupted_frame_names_tensor for the retries
        r = run([tool("llama-perplexity"), "-m", bad, "-f", TEXT, "-c", "128", "-t", "2"])
        if r.stderr.strip():
            break
    assert r.returncode > 0, r.stderr[-3000:]
    assert re.search(rf"{re.escape(str(bad))}: ggzip: tensor '{re.escape(names[0])}' has shape .* whose size overflows",
                     r.stderr), r.stderr[-3000:]


# --- folds that are exact for the logits only (patch 0007) ---

def with_bool_keys(src: Path, dst: Path, keys: dict) -> Path:
    """A copy of the GGUF src with the bool KV pairs keys added (the data section is
    moved as a whole: tensor offsets are relative to it)."""
    from ggzip.container import gguf_io as G
    data = src.read_bytes()
    h = _gguf_header(data, str(src))
    kvs = [h.raw(kv.start, kv.end) for kv in h.kvs.values()] + [G.kv_bytes(k, v, G.VT.BOOL) for k, v in keys.items()]
    head = G.preamble(len(h.tensors), len(kvs)) + b"".join(kvs) + h.raw(h.info_start, h.info_end)
    head += b"\0" * (G.align(len(head), h.alignment) - len(head))
    dst.write_bytes(head + data[h.data_start:])
    return dst


@pytest.fixture(scope="module")
def fold_output(ggz) -> Path:
    from ggzip.constants import Keys
    return with_bool_keys(ggz, ggz.with_name("fold-output.gguf"), {Keys.FOLD_OUTPUT_NORM: True})


@pytest.fixture(scope="module")
def fold_v(ggz) -> Path:
    from ggzip.constants import Keys
    return with_bool_keys(ggz, ggz.with_name("fold-v.gguf"), {Keys.FOLD_ATTN_V: True})


REFUSAL = "its embeddings are not the model's: reconvert with `ggzip convert --no-fold output`"


def test_fold_output_norm_refuses_embeddings(fold_output, ggz):
    emb = tool("llama-embedding")
    ok = run([emb, "-m", ggz, "-p", "Hello world", "-t", "2"])      # the same file without the key embeds
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert REFUSAL not in ok.stderr
    for _ in range(5):   # see test_corrupted_frame_names_tensor for the retries
        r = run([emb, "-m", fold_output, "-p", "Hello world", "-t", "2"])
        if r.stderr.strip():
            break
    assert r.returncode > 0, r.stderr[-3000:]
    assert "output_norm" in r.stderr and REFUSAL in r.stderr, r.stderr[-3000:]
    # text generation (the logits are exact) still runs
    assert float(perplexity(fold_output, "--chunks", "1").split()[0]) > 1.0


def test_fold_output_norm_refuses_embeddings_python(fold_output):
    _llama_cpp()
    r = _python(f"import llama_cpp; llama_cpp.Llama({str(fold_output)!r}, n_ctx=64, embedding=True, verbose=True)")
    assert r.returncode != 0
    assert REFUSAL in r.stderr, r.stderr[-3000:]
    r = _python(f"import llama_cpp; llama_cpp.Llama({str(fold_output)!r}, n_ctx=64, verbose=True)")
    assert r.returncode == 0, r.stderr[-3000:]


def test_fold_attn_v_warns_for_quantized_v_cache(fold_v):
    warning = "V is cached rescaled, so a q8_0 V cache no longer gives exactly the source model's results"
    base = [tool("llama-perplexity"), "-m", fold_v, "-f", TEXT, "-c", "128", "-b", "128", "--chunks", "1", "-t", "2",
            "-fa", "on"]
    r = run(base + ["-ctv", "q8_0"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert warning in r.stderr, r.stderr[-3000:]
    r = run(base)                               # F16 V cache: no warning
    assert r.returncode == 0, r.stderr[-3000:]
    assert "folded into attn_v" not in r.stderr


# --- tensors kept coded in RAM, decoded inside the ops (GGZIP_KEEP, ggzip.keep) ---

KEEPING = re.compile(r"ggzip: keeping (\d+) of (\d+) frames compressed in RAM")
# whole model; the token embedding alone (GET_ROWS, and MUL_MAT as SmolLM2's tied output); a partial plan
KEEP_SPECS = ["all", "token_embd.weight", "blk.[0-9].ffn_*,blk.1*.attn_q*,blk.2?.attn_output*"]


@pytest.mark.parametrize("keep", KEEP_SPECS)
def test_kept_logits_bit_identical(ggz, keep):
    """Kept tensors run the same Q8_0 kernels on the same bytes as the decoded model:
    one token at a time (ggml's vec_dot, as in generation) and in batches (the tinyBLAS
    kernel ggml's MUL_MAT takes for a prompt; from 16 tokens the chunks that would
    leave a thread idle are shared by rows, and GET_ROWS decodes each chunk once for
    all the tokens in it), on 2 and 3 threads, logits equal bit for bit."""
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(str(ggz), n_ctx=64, verbose=False, vocab_only=True)
    tokens = llm.tokenize(TEXT.read_text()[:400].encode())[:72]
    llm.close()
    # 3 threads: the chunk counts (multiples of 4 or 2) leave chunks over for the rounds
    for n_batch, n, threads in ((1, 12, 2), (8, 24, 2), (64, len(tokens), 2), (64, len(tokens), 3)):
        _, plain = _logits(llama_cpp, ggz, tokens[:n], None, n_batch, threads)
        _, kept = _logits(llama_cpp, ggz, tokens[:n], keep, n_batch, threads)
        assert plain.shape == kept.shape and np.isfinite(plain).all()
        assert np.array_equal(plain.view(np.uint32), kept.view(np.uint32)), (keep, n_batch, threads)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_kept_logits_bit_identical_every_arch(arch, tmp_path, capfd):
    """The kept path on the other architectures convert knows (tiny random models:
    qwen2's q/k/v biases, qwen3's and gemma3's per-head q/k norms, gemma3's
    post-norms, GQA, an untied head): every frame kept, logits equal bit for bit
    to the decoded model's, one token at a time and in batches."""
    from ggzip.convert.convert import convert
    from tinymodels import write_tiny
    llama_cpp = _llama_cpp()
    src, out = tmp_path / "f32.gguf", tmp_path / "gz.gguf"
    write_tiny(arch, src)
    # small chunks: several per tensor, so rows are taken from more than one
    convert(src, out, target_bpw=4.5, progress=False, chunk_size=4096, random_tokens=0)
    n_frames = len(ggzip_tensors(out))
    for n_batch in (1, 16):
        logits = []
        for keep in (None, "all"):
            kv = {"ggzip.keep": keep} if keep else None
            llm = llama_cpp.Llama(str(out), n_ctx=128, n_batch=n_batch, n_ubatch=n_batch, n_threads=2,
                                  n_threads_batch=2, logits_all=True, verbose=keep is not None,
                                  kv_overrides=kv)
            tokens = llm.tokenize(TEXT.read_text()[:200].encode())[:40]
            llm.eval(tokens)
            logits.append(np.array(llm.scores[:len(tokens)], np.float32))
            llm.close()
        m = KEEPING.search(capfd.readouterr().err)
        assert m and int(m.group(1)) == n_frames > 0, (arch, m and m.group(0))
        assert np.isfinite(logits[0]).all()
        assert np.array_equal(logits[0].view(np.uint32), logits[1].view(np.uint32)), (arch, n_batch)


def test_keep_from_environment_and_override(ggz, q8_0):
    """GGZIP_KEEP reaches every tool, --override-kv ggzip.keep=str:... wins over it, and
    the perplexity equals the plain file's with every Q8_0 frame kept."""
    names = ggzip_tensors(ggz)
    want = perplexity(q8_0, "--chunks", "2")
    env = {**os.environ, "GGZIP_KEEP": "all"}
    r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "--chunks", "2", "-t", "2", "-v"],
            env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = KEEPING.search(r.stderr)
    assert m and int(m.group(2)) == len(names) and 0 < int(m.group(1)) <= len(names), r.stderr[-3000:]
    assert want in r.stdout + r.stderr
    r = run([tool("llama-perplexity"), "-m", ggz, "-f", TEXT, "-c", "128", "-b", "128", "--chunks", "2", "-t", "2",
             "-v", "--override-kv", "ggzip.keep=str:token_embd.weight"], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert KEEPING.search(r.stderr).group(1) == "1", r.stderr[-3000:]
    assert want in r.stdout + r.stderr
    r = run([tool("llama-bench"), "-m", ggz, "-t", "2", "-p", "8", "-n", "4", "-r", "1", "-v"], env=env)
    assert r.returncode == 0 and KEEPING.search(r.stderr), r.stderr[-3000:]


def test_damaged_kept_frame_fails_the_load(ggz, tmp_path):
    """A kept frame is checked when it is loaded (every chunk's CRC over its stored bytes,
    without decoding): damage fails the load naming the tensor, never the output."""
    import gguf
    r = gguf.GGUFReader(ggz)
    name = "blk.0.ffn_down.weight"
    assert name in ggzip_tensors(ggz)
    t = next(t for t in r.tensors if t.name == name)
    data = bytearray(ggz.read_bytes())
    data[int(t.data_offset) + int(t.n_bytes) * 3 // 4] ^= 0x5A
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    damaged = rf"tensor '{re.escape(name)}': ggzip frame is damaged \(checksum mismatch, chunk \d+\)"
    for _ in range(5):   # see test_corrupted_frame_names_tensor for the retries (under load
        # the log thread may also lose the last lines of a verbose run)
        r = run([tool("llama-perplexity"), "-m", bad, "-f", TEXT, "-c", "128", "-t", "2", "-v"],
                env={**os.environ, "GGZIP_KEEP": "blk.0.*"})
        if re.search(damaged, r.stderr):
            break
    assert r.returncode > 0
    assert re.search(damaged, r.stderr), r.stderr[-3000:]
    assert "selects" in r.stderr and "keeping" not in r.stderr   # failed while loading the kept frames
