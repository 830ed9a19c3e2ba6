"""Checks for notebook 03 (layer quality: LayerIF, layer Shapley values, cornerstone layers)."""
from __future__ import annotations

# cpu on purpose (module): hidden instances are small CPU tensors, graded against CPU references
import contextlib
import math
from itertools import permutations

import numpy as np

from ._core import Mismatch, MissingContext, call, close, equal, exercise, instance_rng, parameters_kept

# ----------------------------------------------------------------------------- 03.1 LayerIF, identity curvature

_TINY: list = []                     # the random tiny Llama, built once per kernel


def _tiny_model():
    if not _TINY:
        from ..models import load_model
        _TINY.append(load_model("tiny-llama", device="cpu")[0])
    return _TINY[0]


@contextlib.contextmanager
def _one_thread():
    """A 3-layer model of width 32 runs fastest on one thread (and on a busy machine, by far)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _random_blocks(rng, n: int, size: int, vocab: int, split: str, masked: bool):
    """n random token blocks; with `masked`, each block's first tokens carry no loss (a prompt)."""
    import torch

    from ..data import IGNORE, Blocks
    ids = torch.as_tensor(rng.integers(0, vocab, size=(n, size)), dtype=torch.long)
    labels = ids.clone()
    if masked:
        for b in range(n):
            labels[b, :int(rng.integers(1, size // 2))] = IGNORE
    return Blocks(ids, labels, torch.ones_like(ids), "random", split)


def _why_factor(got, expected, damping: float, n_val: int) -> str:
    """Name the usual slip when the answer is the expected one times a constant."""
    g, e = np.asarray(got, float).ravel(), np.asarray(expected, float).ravel()
    if g.shape != e.shape or not np.any(np.abs(e) > 0):
        return ""
    big = np.abs(e) > 1e-3 * np.abs(e).max()
    ratio = g[big] / e[big]
    if not np.allclose(ratio, ratio[0], rtol=1e-3):
        return ""
    factor = float(ratio[0])
    for value, why in ((damping, "you did not divide by the damping lambda (H = lambda I, so H^-1 = I / lambda)"),
                       (-damping, "divide by the damping lambda, and mind the sign: I = -g_V . g_i / lambda"),
                       (1 / n_val, "sum the validation gradients over the blocks, do not average them"),
                       (-1 / n_val, "sum the validation gradients (do not average), and mind the sign"),
                       (1 / damping, "divide by lambda once, not twice")):
        if math.isclose(factor, value, rel_tol=1e-3):
            return f". Likely cause: {why}."
    return ""


@exercise("03.1", title="LayerIF of one layer with the identity curvature, from per-example gradients",
          answer="influence_identity",
          hints=("For block j, batch = next(blocks.subset([j]).batches(1, device=model.device)); model(**batch).loss is "
                 "its mean next-token loss, and after .backward() every linear map of lq.layers(model)[k].linears "
                 "holds its .weight.grad.",
                 "Flatten and concatenate those weight gradients into one vector per block (zero the gradients "
                 "between blocks). Sum the vectors of the validation blocks: that is g_V.",
                 "With H = lambda I the inverse curvature is 1 / lambda: I_k(z_i) = -(g_V . g_i) / lambda, one "
                 "number per training block i."))
def _influence_identity(influence_identity, model=None, train=None, validation=None) -> str:
    from ..influence import layer_influence
    tiny = _tiny_model()
    vocab = tiny.config.vocab_size
    cases = [  # (layer k, damping, train blocks, validation blocks, block size, masked prompt tokens)
        (1, 0.1, 3, 2, 12, False),
        (0, 1.0, 4, 1, 20, True),
        (2, 0.03, 2, 3, 8, True),
    ]
    # a learner may freeze parameters for speed: the cached tiny model and the notebook's model get their
    # flags (and gradients) back, or the next check (the shipped solution's too) fails in the same kernel
    with parameters_kept(tiny, model):
        for i, (k, lam, n_train, n_val, size, masked) in enumerate(cases):
            rng = instance_rng("03.1", i)
            tr = _random_blocks(rng, n_train, size, vocab, "train", masked)
            va = _random_blocks(rng, n_val, size, vocab, "validation", masked)
            where = (f"hidden instance {i + 1} (a random 3-layer Llama, layer k = {k}, damping {lam}, "
                     f"{n_train} training and {n_val} validation blocks of {size} tokens"
                     + (", prompt tokens masked)" if masked else ")"))
            with _one_thread():
                expected = layer_influence(tiny, tr, va, curvature="identity", damping=lam, progress=False).matrix[:, k]
                got = call(influence_identity, tiny, tr, va, k, lam, where=where)
            _compare_influence(got, expected, where, lam, n_val)
        if model is not None and train is not None and validation is not None:
            from ..models import layers, model_facts
            k = int(instance_rng("03.1", 9).integers(1, len(layers(model)) - 1))
            tr, va = train.subset([0]), validation.subset([len(validation) - 1])   # one block each: cheap
            where = (f"the real model ({model_facts(model).name or 'your model'}), layer k = {k}, damping 0.1, "
                     "one training and one validation block")
            expected = layer_influence(model, tr, va, curvature="identity", damping=0.1, only={k},
                                       progress=False).matrix[:, k]    # layer k alone: three short passes
            got = call(influence_identity, model, tr, va, k, 0.1, where=where)
            _compare_influence(got, expected, where, 0.1, len(va), rtol=1e-3)
    return ("with H = lambda I, LayerIF is a damped gradient inner product, I_k(z_i) = -g_V . g_i / lambda; "
            "the package gets the same numbers without storing a per-example gradient.")


def _compare_influence(got, expected, where, lam, n_val, rtol=2e-4):
    scale = float(np.abs(expected).max()) or 1.0
    try:
        close(got, expected, where=where, rtol=rtol, atol=rtol * scale, what="influences (one per training block)")
    except Mismatch as why:
        raise Mismatch(str(why) + _why_factor(got, expected, lam, n_val)) from None


# ----------------------------------------------------------------------------- 03.2 permutation Shapley

def _table_game(table: np.ndarray, k: int):
    """v(S) from a table of 2^k values (bit j of the index: player j present), batched like the package's
    value functions: a boolean (m, k) array in, m values out."""
    weights = 1 << np.arange(k, dtype=np.int64)

    def value(coalitions):
        c = np.asarray(coalitions)
        if c.ndim != 2 or c.shape[1] != k:
            raise ValueError(f"value takes a boolean array of shape (m, {k}), one coalition per row; got shape "
                             f"{c.shape}" + (" (wrap one coalition as c[None, :])" if c.shape == (k,) else ""))
        return table[c.astype(bool).astype(np.int64) @ weights]
    return value


def _package_permutation(table: np.ndarray, k: int, orders) -> np.ndarray:
    """The package's own marginals along each order (lq.shapley), averaged over the orders."""
    from ..shapley import _Game, _prefix_marginals
    game = _Game(_table_game(table, k), k)
    return np.mean([_prefix_marginals(game, np.asarray(order, dtype=int)) for order in orders], axis=0)


def _by_position(table: np.ndarray, k: int, orders) -> np.ndarray:
    """A common slip: the marginal stored at its position in the order, not at the player it belongs to."""
    value = _table_game(table, k)
    out = np.zeros(k)
    for order in orders:
        prefixes = np.zeros((k + 1, k), bool)
        for i, player in enumerate(order):
            prefixes[i + 1:, player] = True
        out += np.diff(value(prefixes))
    return out / len(orders)


def _shapley_instances():
    """(description, table, k, orders, all orders?, dummy player or None) for the hidden games."""
    out = []
    rng = instance_rng("03.2", 0)
    table = np.concatenate([[0.0], rng.normal(size=7)])
    out.append(("a random 3-player game, all 3! = 6 orders", table, 3, list(permutations(range(3))), True, None))
    rng = instance_rng("03.2", 1)
    table = rng.normal(size=32)
    orders = [rng.permutation(5) for _ in range(6)]
    orders.append(orders[2].copy())                               # a repeated order counts twice
    out.append(("a random 5-player game with v(empty) != 0, 7 sampled orders (one drawn twice)", table, 5, orders, False, None))
    rng = instance_rng("03.2", 2)
    dummy = int(rng.integers(4))
    base = rng.normal(size=16)
    masks = np.arange(16)
    table = base[masks & ~(1 << dummy)]                           # player `dummy` never changes v
    out.append((f"a 4-player game where player {dummy} is a dummy (adds nothing to any coalition), all 24 orders",
                table, 4, [list(p) for p in permutations(range(4))], True, dummy))
    rng = instance_rng("03.2", 3)
    g = np.cumsum(np.abs(rng.normal(size=5)))                    # v depends on |S| only
    table = g[[bin(m).count("1") for m in range(16)]]
    out.append(("a symmetric 4-player game (v depends on |S| only), all 24 orders", table, 4,
                list(permutations(range(4))), True, None))
    rng = instance_rng("03.2", 4)
    table = rng.normal(size=64)
    orders = [tuple(int(p) for p in rng.permutation(6)) for _ in range(10)]
    out.append(("a random 6-player game, 10 sampled orders", table, 6, orders, False, None))
    rng = instance_rng("03.2", 5)
    table = rng.normal(size=2)
    out.append(("a 1-player game, its only order", table, 1, [[0]], True, None))
    return out


@exercise("03.2", title="Shapley values by permutation sampling, for any value function",
          answer="permutation_shapley",
          hints=("Walk each order player by player: the coalition grows from the empty set to all players. Player "
                 "order[i] joins the first i players of the order; its marginal contribution is v(after) - v(before).",
                 "value() takes a boolean array with one coalition per row. The n + 1 prefixes of one order are "
                 "the rows of a lower-triangular pattern: row i holds the first i players of the order; one call to "
                 "value() then gives all n + 1 values at once.",
                 "np.diff of those n + 1 values gives the n marginals in the order's sequence; add each to the entry "
                 "of the player it belongs to (out[order] += ...), then divide by the number of orders."))
def _permutation_shapley(permutation_shapley, value=None, n_players=None, exact=None) -> str:
    from ..shapley import exact_from_table
    for i, (what, table, k, orders, all_orders, dummy) in enumerate(_shapley_instances()):
        where = f"hidden game {i + 1} ({what})"
        expected = _package_permutation(table, k, orders)
        if all_orders:                                          # the package's marginals are exact here
            assert np.allclose(expected, exact_from_table(table), atol=1e-12)
        got = call(permutation_shapley, _table_game(table, k), k, orders, where=where)
        try:
            close(got, expected, where=where, rtol=1e-9, atol=1e-9, what="Shapley values")
        except Mismatch as why:
            message = str(why)
            g = np.asarray(got, float).ravel()
            if g.size == k:
                span = table[-1] - table[0]
                if not np.isclose(g.sum(), span, atol=1e-9):
                    message += (f". Efficiency fails: your values sum to {g.sum():.6g}, but along every order the "
                                f"marginals telescope to v(N) - v(empty) = {span:.6g}")
                if len(orders) != math.factorial(k) and np.allclose(
                        g, expected * len(orders) / math.factorial(k), atol=1e-9):
                    message += (f". Divide by the number of orders you were given ({len(orders)}), not by "
                                f"{k}! = {math.factorial(k)}: a sampled order is one draw of the average")
                if k > 1 and np.allclose(g, _by_position(table, k, orders), atol=1e-9):
                    message += (". You stored each marginal at its position in the order; it belongs to the player "
                                "who joined (out[order[i]], not out[i])")
            raise Mismatch(message) from None
        if dummy is not None:
            close(np.asarray(got, float)[dummy], 0.0, where=where, atol=1e-9, what="dummy player's value")
    if value is not None and n_players is not None and exact is not None and n_players <= 7:
        where = f"the real model's layer game ({n_players} layers), all {math.factorial(n_players)} orders"
        got = call(permutation_shapley, value, n_players, list(permutations(range(n_players))), where=where)
        close(got, exact, where=where, rtol=1e-7, atol=1e-9, what="Shapley values")
    return ("phi_i averages v(prefix + i) - v(prefix) over the orders: all n! orders give the exact Shapley value, "
            "and any set of orders keeps efficiency (the marginals of one order sum to v(N) - v(empty)).")


# ----------------------------------------------------------------------------- 03.3 cornerstone layers (a number)

@exercise("03.3", title="Read off the cornerstone layers", answer="cornerstone_layers", kind="number",
          hints=("A cornerstone's removal alone moves the loss at least half of the way from the full model to "
                 "chance: compare cs.drop with a threshold.",
                 "The way from the full model to chance is cs.chance_loss - cs.full_loss nats; the threshold is half "
                 "of it. List the layer indices whose drop reaches it."))
def _cornerstones(cornerstone_layers, result=None, fraction: float = 0.5) -> str:
    if result is None:
        raise MissingContext('ex.check("03.3", cornerstone_layers, result=cs) needs the cornerstone result')
    n_layers = len(result.drop)
    try:
        if isinstance(cornerstone_layers, (str, bytes)):
            raise TypeError
        entries = list(np.asarray(cornerstone_layers).ravel()) if hasattr(cornerstone_layers, "shape") \
            else list(cornerstone_layers)                 # any iterable: a list, a set, a generator
    except (TypeError, ValueError):
        raise Mismatch(f"give a list of layer indices, got {cornerstone_layers!r}") from None
    if any(isinstance(i, (bool, np.bool_)) for i in entries) \
            or (len(entries) == n_layers > 2 and all(i in (0, 1) for i in entries)):
        raise Mismatch("that is a mask over the layers (one True/False or 0/1 per layer); give the indices of the "
                       "cornerstone layers (np.flatnonzero(mask))")
    try:
        got = sorted(int(i) for i in entries)
    except (TypeError, ValueError):
        raise Mismatch(f"give a list of layer indices, got {cornerstone_layers!r}") from None
    if any(not 0 <= i < n_layers for i in got):
        raise Mismatch(f"you listed {got}: the layers are numbered 0 .. {n_layers - 1}")
    expected = result.cornerstones(fraction)
    threshold = fraction * (result.chance_loss - result.full_loss)
    try:
        equal(np.isin(np.arange(len(result.drop)), got), np.isin(np.arange(len(result.drop)), expected),
              what="cornerstone mask over the layers")
    except Mismatch:
        if threshold <= 0:
            raise Mismatch(f"you listed {got}, but this model is no better than chance (full_loss "
                           f"{result.full_loss:.3f} >= chance_loss {result.chance_loss:.3f} nats): no layer can take "
                           "it further towards chance, so there are no cornerstones ([])") from None
        raise Mismatch(f"you listed {got}. A layer is a cornerstone when its drop is >= {fraction} * "
                       f"(chance_loss - full_loss) = {threshold:.3f} nats") from None
    return (f"cornerstones {expected}: dropping any one of them alone costs at least {threshold:.2f} nats, half of the "
            "way to a uniform guess.")
