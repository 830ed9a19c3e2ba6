"""Checks for notebook 00 (the tour): count the layers, build the next-token loss, normalise gains to q."""
from __future__ import annotations

# cpu on purpose (module): hidden instances are small CPU tensors, graded against CPU references
import math

import numpy as np

from ._core import Mismatch, MissingContext, NotAnswered, call, close, exercise, instance_rng, one_number, whole_number

IGNORE = -100          # the label value that no loss is taken on (PyTorch's cross-entropy default)


# ----------------------------------------------------------------------------- 00.1 layers and weights


@exercise("00.1", title="Decoder layers and the weights of one layer", answer=("n_layers", "params_per_layer"),
          kind="number",
          hints=("`lq.layers(model)` is a list with one entry per decoder layer.",
                 "Each entry has `.linears` (name -> nn.Linear) and the property `.n_params`: the weights of "
                 "those maps, biases excluded."))
def _layer_count(n_layers, params_per_layer, model=None) -> str:
    from ..models import layers
    if model is None:
        raise MissingContext('ex.check("00.1", n_layers, params_per_layer, model=model): pass the model')
    found = layers(model)
    if whole_number(n_layers) != len(found):
        raise Mismatch(f"n_layers = {n_layers!r}: count the entries of lq.layers(model)")
    per_map = {name: m.weight.numel() for name, m in found[0].linears.items()}
    if whole_number(params_per_layer) != found[0].n_params:
        if whole_number(params_per_layer) in per_map.values():
            raise Mismatch(f"{int(params_per_layer):,} is the weight count of one linear map; add all "
                           f"{len(per_map)} maps of the layer")
        raise Mismatch(f"params_per_layer = {params_per_layer!r}: add the weights (d_out x d_in) of every "
                       f"linear map of one layer")
    return (f"{len(found)} layers of {found[0].n_params:,} weights each in {len(per_map)} linear maps: "
            f"{len(found) * found[0].n_params:,} weights are what the course scores, allocates and prunes.")


# ----------------------------------------------------------------------------- 00.2 next-token loss

def _nll_instance(rng: np.random.Generator, b: int, t: int, v: int, scale: float, p_mask: float,
                  empty_row: bool):
    import torch
    logits = torch.tensor(scale * rng.normal(size=(b, t, v)), dtype=torch.float32)
    labels = rng.integers(0, v, size=(b, t))
    labels[rng.random(size=(b, t)) < p_mask] = IGNORE
    if empty_row:                                     # a block with nothing to score (all masked after the shift)
        labels[b - 1, 1:] = IGNORE
    labels[0, 1] = rng.integers(0, v)                 # at least one target
    return logits, torch.tensor(labels, dtype=torch.long)


def _nll_terms(logits, labels):
    """Per-target NLL (float64) for logits at t predicting labels at t (no shift), and the mask."""
    import torch
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = labels != IGNORE
    nll = -logp.gather(-1, torch.where(keep, labels, 0).unsqueeze(-1)).squeeze(-1) * keep
    return nll, keep


def _nll_reference(logits, labels) -> float:
    """The package's convention (layerq_nb.evaluate.mean_loss): position t predicts token t + 1; the mean
    over the targets that are not IGNORE, across all rows."""
    from ..evaluate import token_nll
    nll = token_nll(logits[:, :-1].double(), labels[:, 1:]).double()
    return float(nll.sum() / (labels[:, 1:] != IGNORE).sum())


def _nll_diagnosis(got: float, logits, labels) -> str:
    """Name a common slip when the learner's value equals what it would give."""
    nll, keep = _nll_terms(logits[:, :-1], labels[:, 1:])
    n = int(keep.sum())
    unshifted, keep_u = _nll_terms(logits, labels)
    backwards, keep_b = _nll_terms(logits[:, 1:], labels[:, :-1])
    rows = [float(r.sum() / k.sum()) for r, k in zip(nll, keep) if int(k.sum()) > 0]
    slips = {
        "the positions are not shifted: logits at position t predict the token at t + 1, so compare "
        "logits[:, :-1] with labels[:, 1:]": float(unshifted.sum() / keep_u.sum()),
        "the shift goes the wrong way: logits[:, :-1] (all but the last position) predict labels[:, 1:]":
            float(backwards.sum() / keep_b.sum()),
        "the masked targets are counted in the mean: divide by the number of labels that are not -100":
            float(nll.sum() / nll.numel()),
        "this is the sum, not the mean, over the targets": float(nll.sum()),
        "this averages each row's mean: average over all targets of all rows at once (rows hold different "
        "numbers of targets)": float(np.mean(rows)),
        "this is in bits (log base 2): use the natural log, nats": float(nll.sum() / n) / math.log(2),
    }
    for why, value in slips.items():
        if math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-9):
            return ". It looks like " + why
    return ""


@exercise("00.2", title="The mean next-token loss (and perplexity) from logits", answer="next_token_nll",
          hints=("Position t of the logits predicts the token at t + 1: drop the last position of the logits "
                 "and the first of the labels before comparing them.",
                 "-log p(y) is what torch.log_softmax (over the vocabulary axis) gives at the label's index "
                 "(gather), or what cross_entropy computes from logits of shape (N, V) and labels of shape (N,).",
                 "Average only over labels that are not -100: the prompt tokens, and padding, carry no loss. "
                 "cross_entropy skips them with ignore_index=-100; by hand, multiply by the mask and divide "
                 "by its sum, over all rows together."))
def _next_token_nll(next_token_nll, model=None, blocks=None) -> str:
    import torch
    cases = [  # B, T, V, logit scale, P(masked), a row with no target
        (1, 5, 7, 1.0, 0.0, False),
        (3, 9, 11, 2.0, 0.3, True),
        (2, 2, 3, 1.0, 0.5, False),
        (4, 16, 50, 6.0, 0.6, True),
        (5, 7, 1000, 3.0, 0.2, False),
    ]
    for i, (b, t, v, scale, p_mask, empty) in enumerate(cases):
        logits, labels = _nll_instance(instance_rng("00.2", i), b, t, v, scale, p_mask, empty)
        where = f"hidden instance {i + 1} (B = {b}, T = {t}, V = {v}, {int((labels[:, 1:] == IGNORE).sum())} " \
                f"masked targets{', one row fully masked' if empty else ''})"
        expected = _nll_reference(logits, labels)
        try:
            got = one_number(call(next_token_nll, logits.clone(), labels.clone(), where=where), where=where,
                             what="mean NLL")
        except Mismatch as why:
            if "-100" not in str(why):
                raise
            raise Mismatch(f"{why}. A label of -100 marks a target without loss: it is no token index, so keep it "
                           f"out of any indexing and out of the count") from None
        try:
            close(got, expected, where=where, rtol=1e-5, atol=1e-7, what="mean NLL")
        except Mismatch as why:
            raise Mismatch(str(why) + _nll_diagnosis(got, logits, labels)) from None
    if model is None or blocks is None:
        return ("the mean NLL over the targets that are not -100, position t predicting t + 1; its exp is "
                "the perplexity.")
    from ..data import Blocks
    from ..evaluate import perplexity
    rows, n = min(2, len(blocks)), min(64, blocks.block_size)      # two short blocks: two cheap forwards
    real = Blocks(blocks.input_ids[:rows, :n], blocks.labels[:rows, :n], blocks.attention_mask[:rows, :n],
                  blocks.task, blocks.split)
    if real.n_targets == 0:
        real = blocks.subset(list(range(rows)))
    batch = next(real.batches(len(real), device=next(model.parameters()).device))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    where = f"the real model on {len(real)} {real.task} {real.split} blocks"
    mine = math.exp(one_number(call(next_token_nll, logits, batch["labels"].clone(), where=where), where=where,
                               what="mean NLL"))
    expected = perplexity(model, real, progress=False)
    close(mine, expected, where=where, rtol=1e-4, what="perplexity exp(mean NLL)")
    return (f"on {len(real)} real {real.task} blocks of {real.block_size} tokens ({real.n_targets} targets) exp(your NLL) = {mine:.4f} "
            f"= lq.perplexity {expected:.4f}: the model is as unsure as a fair choice among that many tokens.")


# ----------------------------------------------------------------------------- 00.3 gains -> q

def _refuses(fn, bad: np.ndarray, where: str, why: str) -> None:
    try:
        out = fn(bad.copy())
    except NotImplementedError:
        raise NotAnswered("your function still raises NotImplementedError: write its body") from None
    except ValueError:
        return
    except Exception as error:
        raise Mismatch(f"{where}: {why}, so it should raise ValueError; your function raised "
                       f"{type(error).__name__}: {error}") from None
    if out is None:
        raise Mismatch(f"{where}: {why}, so it should raise ValueError; your function returned None instead "
                       "(a notebook would carry on with None as its scores)")
    raise Mismatch(f"{where}: {why}, which no scores on the simplex can come from: raise ValueError (with a "
                   f"message that names the problem) instead of returning {np.asarray(out)!r}")


@exercise("00.3", title="Layer gains to scores on the simplex", answer="to_simplex",
          hints=("Each q_k is layer k's share of the total gain: the q_k are >= 0 and sum to 1.",
                 "Divide by the sum of the gains (not by the largest, not by the Euclidean norm, no softmax).",
                 "Before dividing, refuse what cannot be scores: any nan or inf (np.isfinite), any negative "
                 "gain, and a total of zero. Raise ValueError with a message that names the problem."))
def _to_simplex(to_simplex, scores=None) -> str:
    from ..mdl import normalise
    cases = [np.array([3.0, 1.0]), instance_rng("00.3", 1).gamma(0.7, size=30),
             np.array([0.0, 2.0, 0.0, 2.0]), np.array([5.0]), 1e-30 * instance_rng("00.3", 4).random(7) + 1e-31]
    for i, gains in enumerate(cases):
        where = (f"hidden instance {i + 1} (K = {gains.size}{', with zero gains' if np.any(gains == 0) else ''}"
                 f"{', gains of order 1e-30' if gains.max() < 1e-20 else ''})")
        got = call(to_simplex, gains.copy(), where=where)
        close(got, normalise(gains), where=where, rtol=1e-9, atol=1e-12, what="q")
    for i, (bad, why) in enumerate([(np.array([1.0, np.nan, 2.0]), "a gain is nan"),
                                    (np.array([np.inf, 1.0]), "a gain is inf"),
                                    (np.zeros(4), "every gain is zero"),
                                    (np.array([-0.5, 1.5, 1.0]), "a gain is negative")]):
        _refuses(to_simplex, bad, f"hidden bad input {i + 1} ({bad.tolist()})", why)
    if scores is None:
        return "q_k = gain_k / sum_j gain_j, refusing non-finite, negative and all-zero gains."
    values = np.asarray(scores.values, dtype=float)
    got = call(to_simplex, values.copy(), where="the real model's layer gains")
    close(got, scores.q, where="the real model's layer gains", rtol=1e-9, atol=1e-12, what="q")
    top = int(np.argmax(scores.q))
    return (f"q on the simplex, as lq.score computes it; on the real model layer {top} has the largest share, "
            f"q = {scores.q[top]:.3f}.")

