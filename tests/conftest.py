"""Shared fixtures: the real models of the project, installed by `ggzip fetch`
(cached under ~/.cache/ggzip/models; scripts/setup.sh fetches the small ones)."""
from __future__ import annotations

from pathlib import Path

import pytest


def fetch_or_skip(name: str) -> Path:
    """The fetched model, or a visible skip when it cannot be had."""
    from ggzip.errors import GGZipError
    from ggzip.fetch import fetch
    try:
        return fetch(name, quiet=True)
    except GGZipError as e:  # no network and not cached: say so, visibly
        pytest.skip(f"model {name} unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 with a Q8_0 token embedding (llama)."""
    return fetch_or_skip("smollm2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 folder (config.json, vocab.txt, model.safetensors), true F32."""
    return fetch_or_skip("minilm")


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """Gemma-3-270M, Q4_K_M with Q8_0/Q5_0/Q6_K tensors (gemma3)."""
    return fetch_or_skip("gemma3-270m")
