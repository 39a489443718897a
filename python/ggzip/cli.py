"""The `ggzip` command.  Each pipeline step registers its own subcommands:
a module in COMMAND_MODULES exposes ``register(subparsers)``, which adds
parsers whose ``func`` attribute runs the command and returns an exit code."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import GGZipError

COMMAND_MODULES = [
    "ggzip.codec.commands",      # kernels
    "ggzip.container.commands",  # compress, decompress, verify, analyze
    "ggzip.convert.commands",    # convert
    "ggzip.fetch",               # fetch
    "ggzip.run.commands",        # run
    "ggzip.plan.commands",       # plan
]



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ggzip", description="Shrink quantized LLMs below 8 bits and run them in llama.cpp.")
    parser.add_argument("--version", action="version", version=f"ggzip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # a step not installed; the others still work
                continue
            raise
        except GGZipError as e:  # e.g. the native library missing: the other commands still work
            print(f"ggzip: warning: {name} unavailable: {e}", file=sys.stderr)
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GGZipError as e:
        print(f"ggzip: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ggzip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
