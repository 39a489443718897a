"""CLI: `ggzip convert IN OUT [...]`."""
from __future__ import annotations

import argparse
import json
import re
import sys

from ..container.commands import CHUNK_KIB_HELP


def _run(args) -> int:
    from .convert import DEFAULT_STEP, convert
    if args.target_bpw is None and args.step is None and not args.keep_float:
        print(f"ggzip convert: no --target-bpw or --step given: --step {DEFAULT_STEP:g} "
              "(about Q8_0's quality)", file=sys.stderr)
    rep = convert(args.input, args.output, alpha=args.alpha, prune=args.prune,
                  target_bpw=args.target_bpw, step=args.step, imatrix=args.imatrix,
                  calib_text=args.calib_text, theta=args.theta,
                  progress=not args.quiet, keep_float=args.keep_float,
                  bpw_for=dict(args.bpw_for or []), plain=args.plain,
                  threads=args.threads, embd_share=args.embd_share, chunk_size=args.chunk_kib * 1024,
                  no_fold=[n for arg in args.no_fold or [] for n in arg],
                  feedback=args.feedback, fisher=args.fisher, allocate=args.allocate, rdo=args.rdo, trellis=args.trellis, sparsity=args.sparsity, attn_sparsity=args.attn_sparsity,
                  **({} if args.random_tokens is None else {"random_tokens": args.random_tokens}))
    if args.json:
        doc = {"input": str(rep.inp), "output": str(rep.out), "arch": rep.arch,
               "stats": rep.stats_source, "alpha": rep.alpha, "dequantized_from": rep.dequantized_from,
               "seconds": rep.seconds, "file_bytes": rep.file_bytes, "q8_bytes": rep.q8_bytes,
               "plain": rep.plain, "sparsity": rep.sparsity,
               "attn_sparsity": rep.attn_sparsity, **rep.totals(),
               "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.out_type,
                            **({"bpw": t.stats.bpw, "snr_db": t.stats.snr_db,
                                "wsnr_db": t.stats.wsnr_db, "step": t.step}
                               if t.stats else {})} for t in rep.tensors]}
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print(rep.summary())
    return 0


def _pattern_rate(text: str) -> tuple[str, float]:
    pat, sep, val = text.rpartition("=")
    try:
        if not sep or not pat:
            raise ValueError
        return pat, float(val)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected GLOB=BITS, e.g. 'token_embd.weight=3.5'") from None


def _type_rate(text: str) -> tuple[re.Pattern, float]:
    """llama-quantize's --tensor-type PATTERN=TYPE: PATTERN a regex searched in
    the (lower-cased) tensor name, TYPE a ggml type (its bits per weight: q4_k
    -> 4.5) or a number of bits per weight."""
    import gguf
    pat, sep, val = text.partition("=")
    if not sep or not pat or not val:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATTERN=TYPE or PATTERN=BITS, "
                                         "e.g. 'attn_v=q8_0' or 'token_embd=3.5'")
    try:
        rx = re.compile(pat.lower())
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {pat!r} is not a regular expression: {e}") from None
    try:
        return rx, float(val)
    except ValueError:
        pass
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[val.upper()]]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r}: {val!r} is neither a number of bits per "
                                         "weight nor a ggml type (q8_0, q6_k, q4_k, ...)") from None
    return rx, 8 * size / block


def _fold_names(text: str) -> list[str]:
    from ..quantize.fold import FOLD_KEYS
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in FOLD_KEYS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of "
                                         f"{', '.join(FOLD_KEYS)}")
    return names


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="quantize a float GGUF to entropy-friendly Q8_0",
        description="Quantize a F32/F16/BF16 GGUF (or a quantized one, dequantized first) "
                    "into Q8_0 blocks whose symbols are chosen for the rANS coder: "
                    "activation-aware rescaling folded into the model, optional pruning, "
                    "one step per row (outlier blocks their own), rate-controlled.")
    p.add_argument("input", help="input GGUF (F32/F16/BF16, or quantized: dequantized first)")
    p.add_argument("output", help="output ggzip GGUF (Q8_0 tensors rANS-coded; written atomically)")
    p.add_argument("--alpha", type=float, default=None,
                   help="rescaling exponent: s_j = E[x_j^2]^alpha, folded into the model "
                        "(0 = none; default 0.25 with statistics: --imatrix, --calib-text or the "
                        "data-free --random-tokens; 0 with the weight-only proxy, which showed no "
                        "measurable gain)")
    p.add_argument("--prune", type=float, default=0.0, metavar="P",
                   help="fraction of each row to zero by |W|*rms(x) (default 0)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--target-bpw", type=float, metavar="B",
                      help="bits per weight of each tensor (order-0 entropy of symbols + scales)")
    rate.add_argument("--step", type=float, metavar="S",
                      help="step = S x median row absmax/127 (default 1: about Q8_0 quality)")
    p.add_argument("--bpw-for", action="append", type=_pattern_rate, metavar="GLOB=B",
                   help="bits per weight for the tensors matching GLOB (repeatable; first match "
                        "wins), e.g. --bpw-for 'token_embd.weight=3.5'")
    p.add_argument("--tensor-type", action="append", dest="bpw_for", type=_type_rate,
                   metavar="PATTERN=TYPE",
                   help="as llama-quantize's: the tensors whose name contains a match of the regex "
                        "PATTERN get the bits per weight of ggml TYPE (q4_k: 4.5) or a number, "
                        "e.g. --tensor-type attn_v=q6_k; shares the first-match list of --bpw-for")
    p.add_argument("--embd-share", type=float, metavar="S",
                   help="with --target-bpw: code token_embd.weight at S x B and the other tensors "
                        "higher, at the same mean (default 0.77 for gemma-embedding, whose token "
                        "embedding is an input lookup only; 1 = uniform elsewhere)")
    p.add_argument("--imatrix", metavar="FILE",
                   help="llama-imatrix output (GGUF, or legacy .dat); without it or "
                        "--calib-text, statistics of random tokens (--random-tokens)")
    p.add_argument("--random-tokens", type=int, default=None, metavar="N",
                   help="without --imatrix and --calib-text: activation statistics of N tokens "
                        "drawn at random from the vocabulary (data-free; default 1024; 0: none)")
    p.add_argument("--calib-text", metavar="FILE",
                   help="calibration text: statistics by llama-imatrix when built "
                        "(build/llama/bin), else by ggzip's numpy forward pass "
                        "(llama/qwen2/qwen3/gemma3/gemma-embedding)")
    p.add_argument("--theta", type=float, default=None,
                   help=argparse.SUPPRESS)  # rounding offset, for experiments
    p.add_argument("--keep-float", action="store_true",
                   help="write the rescaled, pruned model in F32 without quantizing it "
                        "(to check through llama.cpp that the folding changes nothing)")
    p.add_argument("--no-fold", action="append", type=_fold_names, metavar="output,v",
                   help="leave a fold of 1/s out (repeatable, or a comma list): 'output' keeps "
                        "the final hidden state exact (llama-embedding on a decoder), 'v' keeps "
                        "V exact for a quantized V cache (-ctv q8_0); the output records "
                        "ggzip.fold.output_norm / ggzip.fold.attn_v")
    p.add_argument("--sparsity", type=float, default=0.0, metavar="P",
                   help="activation sparsity of the FFN (CHESS): per-channel thresholds that "
                        "zero a fraction P in [0, 1) of act(gate) on the --calib-text tokens, "
                        "applied by the patched llama.cpp on single-token batches; ffn_down is "
                        "stored transposed (default 0: none)")
    p.add_argument("--attn-sparsity", type=float, default=0.0, metavar="P",
                   help="the same for the inputs of attn_q and attn_output (one threshold per "
                        "layer, the P-quantile of |x|); both stored transposed (default 0)")
    p.add_argument("--feedback", action="store_true",
                   help="error feedback (GPTQ-style): each weight's rounding error is pushed onto "
                        "the weights of its row not yet quantized, through the input covariance "
                        "of ggzip's numpy forward pass over --calib-text (llama, qwen2, qwen3, "
                        "gemma3, gemma-embedding); lowers the KL divergence at the same size, "
                        "converts slower and holds every covariance in memory (8 x cols^2 bytes "
                        "per input)")
    p.add_argument("--fisher", action="store_true",
                   help="row steps by output sensitivity: a numpy backward pass over --calib-text "
                        "(llama, qwen2, qwen3, gemma3, gemma-embedding) weighs each output row of "
                        "each block matrix by its squared output gradients (the sampled Fisher "
                        "of the next-token distribution, or of an encoder's pooled embedding); "
                        "rows that matter more get finer steps at the same size. About 8%% lower "
                        "KL divergence on SmolLM2, 16%% on Gemma-3-270M at 3.9 bpw on text like "
                        "the calibration text, but higher on another domain unless combined "
                        "with --feedback; adds one forward and backward pass (about a minute "
                        "for a 300M model)")
    p.add_argument("--allocate", action="store_true",
                   help="with --target-bpw: rates by output sensitivity. Each kind of block matrix "
                        "(attn_v across the layers, ...) and each tensor after the blocks "
                        "(dense_2, output) is quantized alone and ggzip's numpy forward pass "
                        "(llama, qwen2, qwen3, gemma3, gemma-embedding) measures what that does "
                        "to the output on --calib-text (random tokens without one; an encoder "
                        "needs the text); the groups then get equal-slope rates, the same bytes "
                        "in all. The token embedding keeps its rate. EmbeddingGemma at 3.9 bpw: "
                        "mean cosine 0.985 -> 0.990; Gemma-3-270M: KL divergence 11%% lower; "
                        "about 20-70 s for a 300M model")
    p.add_argument("--rdo", type=float, default=0.0, metavar="K",
                   help="rate-distortion optimised rounding: each weight takes, of its two "
                        "neighbouring grid points, the one minimising error + K x its code "
                        "length (K=1: the high-rate trade of bits for error; default 0: off)")
    p.add_argument("--trellis", action=argparse.BooleanOptionalAction, default=None,
                   help="trellis-coded quantization (the default with --target-bpw, but with "
                        "--rdo or --plain; with --feedback the rows are decided lane after lane): "
                        "a path search per rANS lane picks levels on a grid twice as "
                        "fine as their code pays for, about 25%% lower KL divergence at the same "
                        "size; format-version-2 frames, or 3 with row-step scales (codec library >= "
                        "0.8 loads those). --no-trellis: plain rounding, version-1 (or 3) frames")
    p.add_argument("--plain", action="store_true",
                   help="write an ordinary Q8_0 GGUF (stock llama.cpp loads it) instead of "
                        "rANS-coding the tensors (ggzip compress can code it later)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="rANS encoder and llama-imatrix threads (default: all cores)")
    p.add_argument("--chunk-kib", type=int, default=0, metavar="KIB",
                   help=CHUNK_KIB_HELP)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_defaults)


def _run_defaults(args) -> int:
    if args.theta is None:
        from ..quantize.q8 import DEFAULT_THETA
        args.theta = DEFAULT_THETA
    return _run(args)
