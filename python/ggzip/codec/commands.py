"""`ggzip kernels`: which codec kernels this host has and which one runs."""
from __future__ import annotations


def _kernels(args) -> int:
    from . import LIBRARY_PATH, compiled_kernels, encoder_kernel, forced_kernel_error, kernel, kernels
    here = set(kernels())
    names = compiled_kernels()
    rows = [("kernel", "this host", "in use")] + [
        (name, "available" if name in here else "not supported by this CPU/OS",
         ", ".join(use for use, k in (("decode", kernel()), ("encode", encoder_kernel())) if k == name))
        for name in names]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip())
    print(f"library: {LIBRARY_PATH}")
    err = forced_kernel_error()
    if err:
        print(f"note: {err}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("kernels", help="list the codec's SIMD kernels and the one in use")
    p.set_defaults(func=_kernels)
