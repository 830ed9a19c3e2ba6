"""Perplexity: equals the model's own loss, batch-size invariant, real-model numbers per task."""
from __future__ import annotations

import math

import pytest
import torch

from layerq_nb import load_task, mean_loss, perplexity


@pytest.mark.parametrize("task", ["prose", "arithmetic"])
def test_mean_loss_matches_transformers_loss(tiny, task):
    model, tok = tiny
    blocks = load_task(task, tok, split="test", n_blocks=3, block_size=64)
    ours = mean_loss(model, blocks, batch_size=2, progress=False)
    with torch.no_grad():   # transformers averages the shifted cross-entropy over non-ignored labels
        theirs = model(input_ids=blocks.input_ids, labels=blocks.labels).loss.item()
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert mean_loss(model, blocks, batch_size=1, progress=False) == pytest.approx(ours, rel=1e-6)


def test_block_size_beyond_context_is_an_error(tiny):
    model, tok = tiny
    blocks = load_task("prose", tok, split="test", n_blocks=1, block_size=64)
    model.config.max_position_embeddings = 32
    try:
        with pytest.raises(ValueError, match="exceed the model's context of 32"):
            perplexity(model, blocks, progress=False)
    finally:
        model.config.max_position_embeddings = 512


@pytest.mark.real_model
def test_real_model_perplexity_per_task(real):
    model, tok = real
    ppl = {task: perplexity(model, load_task(task, tok, split="test", n_blocks=16, block_size=256), progress=False)
           for task in ("prose", "code", "arithmetic")}
    vocab = model.config.vocab_size
    assert all(2 < p < 60 for p in ppl.values()), ppl            # a random model sits near vocab = 49152
    assert math.log(vocab) - max(math.log(p) for p in ppl.values()) > 6
    values = sorted(ppl.values())
    assert all(b / a > 1.15 for a, b in zip(values, values[1:])), ppl   # clearly different tasks
