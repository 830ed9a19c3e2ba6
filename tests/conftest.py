"""Shared fixtures: the real model is loaded once per session (dequantised once per machine)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))   # tests/strategies.py


@pytest.fixture(scope="session")
def real():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, from the cache or the shipped GGUF."""
    from layerq_nb import load_model
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny():
    from layerq_nb import load_model
    return load_model("tiny-llama", device="cpu")
