"""Checks for notebook 01 (gradient isolation): a weight gradient from hooks, per-layer squared norms."""
from __future__ import annotations

# cpu on purpose (module): hidden instances are small CPU tensors, graded against CPU references
import contextlib

import numpy as np

from ._core import (
    Mismatch,
    MissingContext,
    NotAnswered,
    _low_precision,
    call,
    close,
    exercise,
    instance_rng,
    parameters_kept,
)

IGNORE = -100


# ----------------------------------------------------------------------------- 01.1 hooks -> b^T a

def _torch_generator(key: str, index: int):
    import torch
    return torch.Generator().manual_seed(int(instance_rng(key, index).integers(2**31)))


def _linear_case(index: int):
    """Hidden instance `index`: (the nn.Linear to differentiate, loss_fn, every parameter of the net, the
    input leaf, number of tokens, description). The loss runs the module inside a small network."""
    import torch
    from torch import nn
    gen = _torch_generator("01.1", index)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def linear(d_in, d_out, bias=True):
        m = nn.Linear(d_in, d_out, bias=bias).double()
        with torch.no_grad():
            m.weight.copy_(randn(d_out, d_in) / d_in ** 0.5)
            if bias:
                m.bias.copy_(randn(d_out))
        return m

    if index == 0:        # tokens x features, mean squared error
        mod, x, y = linear(5, 3), randn(7, 5), randn(7, 3)
        return mod, x, lambda x: ((mod(x) - y) ** 2).mean(), [mod], 7, "nn.Linear(5, 3), 7 tokens, mean squared error"
    if index == 1:        # (B, T, d) inside a net, masked mean cross-entropy
        mod, head = linear(6, 4, bias=False), linear(4, 3)
        x = randn(2, 5, 6)
        labels = torch.randint(0, 3, (2, 5), generator=gen)
        labels[0, :2] = IGNORE

        def loss(x):
            logits = head(torch.tanh(mod(x)))
            return nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), ignore_index=IGNORE)
        return mod, x, loss, [mod, head], 10, "nn.Linear(6, 4, bias=False) on (B, T) = (2, 5) tokens, masked mean cross-entropy"
    if index == 2:        # a summed loss: no 1/N anywhere
        mod, x = linear(8, 8), randn(3, 4, 8)
        return mod, x, lambda x: torch.sin(mod(x)).sum(), [mod], 12, "nn.Linear(8, 8) on (3, 4) tokens, summed loss"
    if index == 3:        # one token, one input feature
        mod, x = linear(1, 2), randn(1, 1)
        return mod, x, lambda x: (mod(x) ** 3).sum(), [mod], 1, "nn.Linear(1, 2), a single token"
    # the output feeds two branches: b is the sum of both
    mod, x = linear(10, 10), randn(4, 6, 10)

    def loss(x):
        h = mod(x)
        return torch.relu(h).sum() / 24 + (h ** 2).mean() + (x + h).pow(2).mean()
    return mod, x, loss, [mod], 24, "nn.Linear(10, 10) on (4, 6) tokens whose output feeds two branches and a residual"


@contextlib.contextmanager
def _frozen(params, keep=()):
    """requires_grad off for `params` (except `keep`), restored on exit."""
    saved = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in saved:
            p.requires_grad_(any(p is k for k in keep))
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _hook_tables(module) -> list[dict]:
    """The module's own hook dicts and torch's global ones (register_module_forward_hook & co., which
    would fire on every module of every later cell)."""
    from torch.nn.modules import module as torch_module
    tables = [getattr(module, name, None) for name in _HOOKS]
    tables += [getattr(torch_module, name, None) for name in _GLOBAL_HOOKS]
    return [t for t in tables if t is not None]


def _run_learner(weight_grad, module, loss_fn, params, where: str):
    """The learner's function with every parameter frozen (the weight's .grad stays None, as in the
    package's tape), its hooks (on the module or global) checked for leaks and removed."""
    tables = _hook_tables(module)
    before = [set(t) for t in tables]
    try:
        with _frozen(params):
            got = call(weight_grad, module, loss_fn, where=where)
    except Mismatch as why:
        if "tuple" not in str(why) and "RemovableHandle" not in str(why):
            raise
        raise Mismatch(f"{why}. (A forward hook that returns a value replaces the module's output, and "
                       f"output.register_hook(...) returns a handle: a lambda hook returns it. Let the hook store a "
                       f"and register the tensor hook in a def, and return nothing.)") from None
    except NotAnswered as why:
        if "returned None" in str(why):
            raise NotAnswered(f"{why}. (module.weight.grad is None here: the weights are frozen, as in the "
                              f"package's tape; form the gradient from a and b)") from None
        raise
    finally:
        leaked = 0
        for table, keys in zip(tables, before):
            for key in [k for k in table if k not in keys]:
                del table[key]
                leaked += 1
    if leaked > 0:
        raise Mismatch(f"{where}: your function left {leaked} hook(s) behind; keep the handle that "
                       f"register_forward_hook returns and call handle.remove() (in a finally block)")
    return got


def _factor_note(got, expected, tokens: int) -> str:
    g, e = (np.asarray(v.detach().cpu().double() if hasattr(v, "detach") else v, dtype=float) for v in (got, expected))
    if g.shape != e.shape or not np.any(e):
        return ""
    ratio = float((g * e).sum() / (e * e).sum())
    if not np.allclose(g, ratio * e, rtol=1e-6, atol=1e-12 * np.abs(e).max()) or tokens == 1:
        return ""
    if np.isclose(ratio, 1 / tokens) or np.isclose(ratio, tokens):
        return (f" = {'1/' if ratio < 1 else ''}{tokens}, the number of tokens: b = dLoss/ds already carries the "
                f"loss's normalisation (the 1/N of a mean, none for a sum); sum b_t a_t^T over the tokens as it is")
    return ""


@exercise("01.1", title="A weight gradient from hooks: dL/dW = sum_t b_t a_t^T", answer="weight_grad",
          hints=("module.register_forward_hook(fn) calls fn(module, inputs, output) on every forward: inputs[0] "
                 "is a. On the output tensor, output.register_hook(fn) calls fn(grad) during backward: that grad is b.",
                 "Inside weight_grad: register the hook, call loss_fn() and .backward() on the loss, remove the "
                 "hook, then flatten a and b to (tokens, d_in) and (tokens, d_out) with reshape(-1, d).",
                 "The gradient of s_t = W a_t + c with respect to W is the sum over tokens of the outer products "
                 "b_t a_t^T: one matrix product of shape (d_out, tokens) x (tokens, d_in)."))
def _weight_grad(weight_grad, model=None, blocks=None) -> str:
    import torch
    for i in range(5):
        module, x, loss_of, nets, tokens, what = _linear_case(i)
        where = f"hidden instance {i + 1} ({what})"
        params = [p for net in nets for p in net.parameters()]
        with _frozen(params, keep=(module.weight,)):
            expected = torch.autograd.grad(loss_of(x), module.weight)[0]
        leaf = x.clone().requires_grad_(True)           # the input carries the gradient, as the embedding's does
        try:
            got = _run_learner(weight_grad, module, lambda loss_of=loss_of, leaf=leaf: loss_of(leaf), params, where)
        except Mismatch as why:
            if x.ndim < 3 or "your function raised" not in str(why):
                raise
            raise Mismatch(f"{why}. (Here a and b are (B, T, d): flatten them to (B*T, d) before the product.)") from None
        if not isinstance(got, torch.Tensor):        # the notebook's next cell takes g.norm() of it
            raise Mismatch(f"{where}: return a torch tensor (b.T @ a on the hooked tensors), got a "
                           f"{type(got).__name__}")
        # a float32 accumulator is a fair way to sum b_t a_t^T (autograd's own on a float32 model): its
        # rounding, not a mistake, is what 1e-5 lets through
        try:
            close(got, expected, where=where, rtol=1e-5 if _low_precision(got) else 1e-6, atol=1e-10, what="weight gradient")
        except Mismatch as why:
            raise Mismatch(str(why) + _factor_note(got, expected, tokens)) from None
    if model is None or blocks is None:
        return "dL/dW = sum_t b_t a_t^T from a forward hook (a) and a tensor hook on the output (b)."
    return _weight_grad_real(weight_grad, model, blocks)


def _weight_grad_real(weight_grad, model, blocks) -> str:
    """Two linear maps of the real model on one short block: the learner's b^T a against autograd."""
    import torch

    from ..models import layers
    found = layers(model)
    n = min(32, blocks.block_size)
    ids, mask, labels = blocks.input_ids[:1, :n], blocks.attention_mask[:1, :n], blocks.labels[:1, :n]
    device = next(model.parameters()).device
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    params = list(model.parameters())
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_(True))
    report = []
    chosen = [(0, "self_attn.k_proj"), (len(found) // 2, "mlp.down_proj")]
    modules = [found[index].linears[name] for index, name in chosen]

    def loss_fn():
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    with parameters_kept(model):         # the learner's own .grad and flags, as they were
        try:
            with _frozen(params, keep=[m.weight for m in modules]):       # autograd's answer, one pass for both
                expected_all = torch.autograd.grad(loss_fn(), [m.weight for m in modules])
            for (index, name), module, expected in zip(chosen, modules, expected_all):
                where = f"the real model, layer {index} {name} ({tuple(module.weight.shape)}), one block of {n} tokens"
                got = _run_learner(weight_grad, module, loss_fn, params, where)
                scale = float(expected.abs().max())
                try:
                    close(got, expected, where=where, rtol=1e-3, atol=1e-4 * scale, what="weight gradient")
                except Mismatch as why:
                    raise Mismatch(str(why) + _factor_note(got, expected, n)) from None
                g = torch.as_tensor(np.asarray(got.detach().cpu() if hasattr(got, "detach") else got)).double()
                report.append(f"layer {index} {name.split('.')[-1]} {float((g - expected.double()).abs().max()) / scale:.1e}")
        finally:
            handle.remove()
    return ("b^T a from your hooks is autograd's weight gradient; on the real model (largest error relative to the "
            "largest entry): " + ", ".join(report) + ".")


# ----------------------------------------------------------------------------- 01.2 ||g_k||^2

def _grads_case(index: int):
    """Hidden instance: a dict (layer, module name) -> gradient tensor, in an order that is not the layers'."""
    import torch
    gen = _torch_generator("01.2", index)
    rng = instance_rng("01.2", index)
    n_layers, names, order, zero, missing = [
        (2, ("q", "down"), "model", None, None),
        (5, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "backward", None, None),
        (4, ("attn", "mlp"), "shuffled", 2, None),
        (3, ("a", "b", "c"), "shuffled", None, 1),
        (1, ("only",), "model", None, None),
        (4, ("x", "y"), "shuffled", None, 3),          # the last layer absent: the size comes from n_layers
    ][index]
    grads = {}
    for layer in range(n_layers):
        if layer == missing:
            continue
        for name in names:
            shape = (1, 1) if n_layers == 1 else tuple(int(d) for d in rng.integers(1, 9, size=2))
            g = torch.randn(*shape, generator=gen) * float(rng.uniform(0.1, 3.0))
            grads[(layer, name)] = torch.zeros(shape) if layer == zero else g
    keys = list(grads)
    if order == "backward":
        keys = keys[::-1]
    elif order == "shuffled":
        keys = [keys[i] for i in rng.permutation(len(keys))]
    detail = {"model": "in model order", "backward": "in backward order (last layer first)",
              "shuffled": "in no particular order"}[order]
    if zero is not None:
        detail += f", layer {zero} with a zero gradient"
    if missing is not None:
        detail += f", layer {missing} with no modules in the dict"
    return {k: grads[k] for k in keys}, n_layers, f"{n_layers} layers, {len(names)} modules each, {detail}"


def _layer_norm2(grads: dict, n_layers: int) -> np.ndarray:
    """The package's ||g_k||^2 (layerq_nb.ui.steps.gradient_isolation): squares summed over a layer's modules."""
    out = np.zeros(n_layers)
    for (layer, _), g in grads.items():
        out[layer] += float((g.double() ** 2).sum())
    return out


@exercise("01.2", title="Gradient isolation: ||g_k||^2 per layer from per-module gradients",
          answer="layer_grad_norms",
          hints=("g_k is every weight of layer k's linear maps stacked into one vector, so ||g_k||^2 adds the "
                 "squared entries of all of that layer's module gradients.",
                 "Start from np.zeros(n_layers) and add each module's sum of squares at its layer index: the "
                 "layer is the first element of the dict's key, whatever order the entries come in.",
                 "Square before summing (not the norm, not the sum squared), and use float64 for the sums: "
                 "g.double() or float(...) per module."))
def _layer_grad_norms(layer_grad_norms, grads=None, n_layers=None) -> str:
    for i in range(6):
        case, k, what = _grads_case(i)
        where = f"hidden instance {i + 1} ({what})"
        expected = _layer_norm2(case, k)
        got = call(layer_grad_norms, dict(case), k, where=where)
        if not isinstance(got, np.ndarray):
            raise Mismatch(f"{where}: return a NumPy array (start from np.zeros(n_layers)), got a "
                           f"{type(got).__name__}: the next cells compute and plot with it (norm2 / norm2.sum())")
        try:
            close(got, expected, where=where, rtol=1e-5, atol=1e-9, what="||g_k||^2 per layer")
        except Mismatch as why:
            g = np.asarray(got, dtype=float) if np.size(got) == k else None
            note = ""
            if g is not None and np.allclose(np.sort(g.ravel()), np.sort(expected), rtol=1e-5) \
                    and not np.allclose(g.ravel(), expected, rtol=1e-5):
                note = (". Your values are right but sit at the wrong layers: take each entry's layer from its "
                        "key (layer, module), not from the dict's order (the tape meets modules in backward order)")
            raise Mismatch(str(why) + note) from None
    if grads is None or n_layers is None:
        return "||g_k||^2 = sum over layer k's modules of the squared entries of their gradients."
    where = "the real model's gradients (lq.layer_gradients)"
    expected = _layer_norm2(grads, n_layers)
    got = call(layer_grad_norms, dict(grads), n_layers, where=where)
    close(got, expected, where=where, rtol=1e-5, atol=1e-12, what="||g_k||^2 per layer")
    top = int(np.argmax(expected))
    return (f"||g_k||^2 for all {n_layers} layers of the real model; they add up to ||g||^2 over the decoder layers "
            f"because the blocks g_k do not overlap (layer {top} holds {expected[top] / expected.sum():.1%}).")


# ----------------------------------------------------------------------------- 01.3 the steepest layer

@exercise("01.3", title="The layer with the largest share of ||g||^2", answer="k", kind="number",
          hints=("iso.layer_norm2 holds ||g_k||^2 per layer (index k = position in the array).",
                 "np.argmax returns the index of the largest entry."))
def _largest_layer(k, iso=None) -> str:
    if iso is None:
        raise MissingContext('ex.check("01.3", k, iso=iso): pass the isolation result')
    best = int(np.argmax(iso.layer_norm2))
    try:
        if isinstance(k, (str, bytes, bool)) or getattr(k, "ndim", 0) != 0:
            raise TypeError
        value = float(k)
    except (TypeError, ValueError, OverflowError):
        raise Mismatch(f"k = {k!r}: give the layer index as a whole number") from None
    if not np.isfinite(value) or value != int(value):
        raise Mismatch(f"k = {value:.6g} is not a layer index: it looks like a value of ||g_k||^2 or a share; "
                       "np.argmax gives the index of the largest")
    k = int(value)
    if not 0 <= k < len(iso.layer_norm2):
        raise Mismatch(f"k = {k}: layers are numbered 0 .. {len(iso.layer_norm2) - 1}")
    if k != best:
        raise Mismatch(f"layer {k} holds {iso.share(k):.1%} of ||g||^2; another layer holds more")
    return (f"layer {best} holds {iso.share(best):.1%} of the decoder layers' ||g||^2 "
            f"(a uniform share would be {1 / len(iso.layer_norm2):.1%}).")
