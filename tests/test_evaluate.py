"""Perplexity: equals the model's own loss, batch-size invariant, real-model numbers per task."""
from __future__ import annotations

import math

import pytest
import torch

from layerq_nb import load_task, mean_loss, perplexity
from layerq_nb.data import IGNORE
from layerq_nb.evaluate import token_nll


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


@pytest.mark.slow
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


def test_token_nll_against_a_per_token_loop():
    """The one NLL function: -log softmax(logits_t)[y_t] per target (a float64 loop as reference), 0 where
    masked; from log-probabilities (the tape's form) the same numbers and the same gradients."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64).float().requires_grad_(True)
    targets = torch.randint(11, (2, 5), generator=gen)
    targets[0, 1] = targets[1, 4] = IGNORE
    expected = torch.zeros(2, 5, dtype=torch.float64)
    for i in range(2):
        for t in range(5):
            if targets[i, t] != IGNORE:
                row = logits[i, t].detach().double()
                expected[i, t] = torch.logsumexp(row, 0) - row[targets[i, t]]
    got = token_nll(logits, targets)
    assert got.shape == (2, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    assert got[0, 1] == 0 and got[1, 4] == 0
    assert float(token_nll(logits, targets, reduction="sum")) == pytest.approx(float(got.sum()), rel=1e-6)
    logp = torch.log_softmax(logits, -1)
    assert torch.equal(token_nll(logp, targets, log_probs=True), got)
    (grad_logits,) = torch.autograd.grad(got.sum(), logits)
    (grad_logp,) = torch.autograd.grad(token_nll(logp, targets, log_probs=True).sum(), logits)
    assert torch.equal(grad_logits, grad_logp)
    with pytest.raises(ValueError, match="reduction must be"):
        token_nll(logits, targets, reduction="mean")


def test_the_tape_uses_the_same_nll_and_phases_are_named_tuples(tiny):
    """run_tape's returned loss is the evaluation's summed NLL; a Phase and the plain tuple it replaces
    give bit-identical statistics; options after (model, blocks, reducers) are keyword-only."""
    from layerq_nb.tape import GradientSum, KFACFactors, Phase, run_tape
    model, tok = tiny
    blocks = load_task("prose", tok, split="test", n_blocks=2, block_size=32)
    runs = []
    for phase in (Phase([GradientSum()]), ([GradientSum()], "data", "mean")):
        factors = KFACFactors()
        total = run_tape(model, blocks, [factors], labels="sampled", reduction="sum", then=[phase], progress=False)
        runs.append((total, factors.state, phase[0][0].state))
    assert runs[0][0] == pytest.approx(mean_loss(model, blocks, progress=False) * blocks.n_targets, rel=1e-5)
    assert runs[0][0] == runs[1][0]
    for a, b in ((runs[0][1], runs[1][1]), (runs[0][2], runs[1][2])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert Phase([]) == ([], "data", "mean")
    with pytest.raises(TypeError):
        run_tape(model, blocks, [GradientSum()], "data")
