"""The `ggzip` command line: every subcommand's help renders, llama.cpp's flags
are taken where ggzip mirrors a llama.cpp tool, `kernels` prints a table."""
from __future__ import annotations

import argparse
import re

import pytest

from ggzip.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_subcommand_has_help(capsys):
    subs = _subcommands()
    for name in ("convert", "compress", "decompress", "verify", "analyze", "kernels", "run", "fetch"):
        assert name in subs, f"ggzip {name} is not registered"
    for name in subs:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0, name
        assert f"usage: ggzip {name}" in out
        assert "%%" not in out, f"ggzip {name} --help: {out}"   # '%' escaped in a description


def test_threads_flag_everywhere():
    """Every command that runs threads takes llama.cpp's -t/--threads."""
    for name, p in _subcommands().items():
        opts = {o for a in p._actions for o in a.option_strings}
        if "--threads" in opts:
            assert "-t" in opts, name
    for name in ("convert", "compress", "decompress", "verify", "analyze", "run"):
        assert "-t" in {o for a in _subcommands()[name]._actions for o in a.option_strings}, name


def test_run_takes_llama_cli_flags(tmp_path, capsys):
    p = _subcommands()["run"]
    a = p.parse_args(["-m", "x.gguf", "-p", "hi", "-n", "5", "-c", "128", "-t", "1",
                      "--temp", "0", "--seed", "3"])
    assert (a.model, a.prompt, a.n_predict, a.ctx_size, a.threads, a.temp, a.seed) == \
        ("x.gguf", "hi", 5, 128, 1, 0.0, 3)
    assert p.parse_args(["x.gguf", "-p", "hi", "--ctx-size", "64"]).ctx_size == 64
    missing = str(tmp_path / "missing.gguf")
    assert main(["run", "-m", missing, "-p", "hi"]) == 1
    assert "missing.gguf: no such file" in capsys.readouterr().err
    assert main(["run", missing, "-m", missing, "-p", "hi"]) == 1     # the model twice
    assert "give the model once" in capsys.readouterr().err


def test_kernels_prints_an_aligned_table(capsys):
    pytest.importorskip("ggzip.codec._native")
    assert main(["kernels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from ggzip import codec
    rows = [ln for ln in lines if ln.split() and ln.split()[0] in codec.compiled_kernels()]
    assert len(rows) == len(codec.compiled_kernels())
    status = {ln.index(ln.split()[1]) for ln in rows}     # every status starts in one column
    assert len(status) == 1 and lines[0].index("this host") in status
    in_use = [ln for ln in rows if re.search(r"\bdecode\b", ln)]
    assert len(in_use) == 1 and in_use[0].split()[0] == codec.kernel()
