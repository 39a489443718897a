"""`ggzip plan`: which tensors stay compressed in RAM for a memory budget."""
from __future__ import annotations

from .measure import DEFAULT_CTX


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="choose the tensors kept compressed in RAM for a memory budget (the ggzip.keep SPEC)",
        description="Calibrate MODEL (a ggzip GGUF) on this device, once (cached under ~/.cache/ggzip/plan), "
                    "then choose the tensors that stay compressed in RAM, decoded inside the matrix products, "
                    "so that the predicted peak RSS fits SIZE at the least predicted cost per generated token.  "
                    "Use the SPEC with `ggzip run --memory`, --override-kv ggzip.keep=str:SPEC in llama.cpp's "
                    "tools, GGZIP_KEEP=SPEC, or kv_overrides={'ggzip.keep': SPEC}.")
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("--memory", required=True, metavar="SIZE",
                   help="peak RSS budget: bytes, or K/M/G (KiB/MiB/GiB), KB/MB/GB (powers of 1000): 300M, 0.5G")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads to run with (default: all cores)")
    p.add_argument("-c", "--ctx", type=int, default=DEFAULT_CTX, help=f"context size (default {DEFAULT_CTX})")
    p.add_argument("--spec", action="store_true", help="print only the SPEC")
    p.add_argument("--recalibrate", action="store_true", help="measure again instead of using the cache")
    p.add_argument("--rounds", type=int, default=1,
                   help="calibration passes, the fastest kept (default 1; 2-3 on a busy machine)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import GGZipError
    from .plan import format_plan, plan
    if args.threads is not None and args.threads < 1 or args.ctx < 1:
        raise GGZipError("--threads and --ctx must be >= 1")
    p = plan(args.model, args.memory, threads=args.threads, ctx=args.ctx, recalibrate=args.recalibrate,
             rounds=args.rounds)
    print(p.spec if args.spec else format_plan(p))
    return 0
