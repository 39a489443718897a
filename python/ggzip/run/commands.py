"""`ggzip run`: generate text from a GGUF (ggzip or plain) with llama-cpp-python."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import GGZipError


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="generate text with the patched llama.cpp (llama-cpp-python)",
                              description="Generate text from MODEL (a ggzip or plain GGUF) through "
                                          "llama-cpp-python built by scripts/build_llama.sh --python.  "
                                          "The flags are llama-cli's.")
    p.add_argument("model_pos", nargs="?", metavar="MODEL.gguf", help="the model (or -m)")
    p.add_argument("-m", "--model", metavar="MODEL.gguf", help="the model (as llama-cli takes it)")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("-c", "--ctx-size", "--ctx", dest="ctx_size", type=int, default=2048,
                   help="context size (default 2048)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--temp", type=float, default=0.8, help="sampling temperature (0: greedy)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--memory", metavar="SIZE", default=None,
                   help="peak RSS budget (300M, 0.5G, bytes): plan the tensors kept compressed in RAM "
                        "(ggzip plan) and run with that SPEC")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")
    p.set_defaults(func=run)


def run(args) -> int:
    if (args.model is None) == (args.model_pos is None):
        raise GGZipError("give the model once: ggzip run -m MODEL.gguf -p PROMPT")
    model = Path(args.model or args.model_pos)
    if not model.is_file():
        raise GGZipError(f"{model}: no such file")
    if args.n_predict < 0 or (args.threads is not None and args.threads < 1):
        raise GGZipError("-n must be >= 0 and -t/--threads >= 1")
    if args.ctx_size < 1:
        raise GGZipError("-c/--ctx-size must be >= 1")
    from .llama import Llama
    llm = Llama(model, n_ctx=args.ctx_size, n_threads=args.threads or os.cpu_count(), seed=args.seed,
                verbose=args.verbose, memory=args.memory)
    if llm.ggzip_plan is not None:
        p = llm.ggzip_plan
        print(f"ggzip: keeping {len(p.kept)} tensors compressed ({p.spec}): predicted peak RSS "
              f"{p.peak_rss / (1 << 20):.1f} MiB, {p.gen_tps:.1f} tokens/s", file=sys.stderr)
    for part in llm(args.prompt, max_tokens=args.n_predict, temperature=args.temp, stream=True):
        sys.stdout.write(part["choices"][0]["text"])
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
