"""`ggzip kernels`: which codec kernels this host has and which one runs."""
from __future__ import annotations


def _kernels(args) -> int:
    from . import LIBRARY_PATH, compiled_kernels, encoder_kernel, forced_kernel_error, kernel, kernels
    here = set(kernels())
    for name in compiled_kernels():
        mark = "*" if name == kernel() else " "
        print(f"{mark} {name:8s} {'available' if name in here else 'not supported by this CPU/OS'}")
    print(f"decode kernel: {kernel()}, encode kernel: {encoder_kernel()}, library: {LIBRARY_PATH}")
    err = forced_kernel_error()
    if err:
        print(f"note: {err}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("kernels", help="list the codec's SIMD kernels and the one in use")
    p.set_defaults(func=_kernels)
