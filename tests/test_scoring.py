"""Scoring core: gradients, curvature and zeta^2 against autograd, dense Gauss-Newton blocks and theory."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerq_nb import LayerScores, layers, load_task, models, newton_step, score
from layerq_nb.curvature import exact_layer, ggn_vector_product
from layerq_nb.data import IGNORE, Blocks
from layerq_nb.scoring import layer_gradients, module_solves


@pytest.fixture(scope="module")
def micro():
    """A 2-layer Llama with hidden 8 (576 weights per layer): small enough for dense Jacobians."""
    model, tok = models._tiny_llama(n_layers=2, hidden_size=8, heads=2, kv_heads=1, seed=3)
    model.eval()
    model.set_attn_implementation("eager")     # forward-mode AD (the reference Jacobian) needs eager attention
    blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=12)
    return model, tok, blocks


def autograd_layer_grads(model, blocks):
    """g_k by plain autograd on transformers' own mean loss."""
    model.zero_grad()
    model(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask, labels=blocks.labels).loss.backward()
    out = {(layer.index, name): mod.weight.grad.detach().clone()
           for layer in layers(model) for name, mod in layer.linears.items()}
    model.zero_grad()
    return out


def dense_ggn_reference(model, blocks, layer_index):
    """G_kk = (1/N) sum_t J_t^T (diag p_t - p_t p_t^T) J_t from an explicit Jacobian (independent of the package)."""
    layer = layers(model)[layer_index]
    names = [f"{layer.name}.{m}.weight" for m in layer.linears]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def logits_of(flat):
        new, i = {}, 0
        for n, shape in zip(names, shapes):
            size = int(np.prod(shape))
            new[n] = flat[i:i + size].view(shape)
            i += size
        out = torch.func.functional_call(model, {**{k: v.detach() for k, v in params.items()}, **new},
                                         (blocks.input_ids,), {"attention_mask": blocks.attention_mask, "use_cache": False})
        return out.logits[:, :-1]

    with torch.no_grad():
        p = torch.softmax(logits_of(flat0), -1).double()
    jac = torch.autograd.functional.jacobian(logits_of, flat0, vectorize=True, strategy="forward-mode").double()  # (B, T-1, V, D)
    targets = blocks.labels[:, 1:] != IGNORE
    ggn = torch.zeros(flat0.numel(), flat0.numel(), dtype=torch.float64)
    for b, t in zip(*torch.nonzero(targets, as_tuple=True)):
        j, pt = jac[b, t], p[b, t]
        ggn += j.T @ ((torch.diag(pt) - torch.outer(pt, pt)) @ j)
    return ggn / int(targets.sum()), names


# ----------------------------------------------------------------------------- gradients

def test_gradients_match_autograd(tiny):
    model, tok = tiny
    blocks = load_task("arithmetic", tok, split="train", n_blocks=3, block_size=64)   # masked prompts too
    ours = layer_gradients(model, blocks, batch_size=2, progress=False)
    ref = autograd_layer_grads(model, blocks)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-7)


def test_padding_is_removed_before_reducing(tiny):
    """Right-padded blocks: padded positions carry no loss and are dropped from every statistic."""
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=48)
    mask = torch.ones_like(blocks.input_ids)
    mask[1, 30:] = 0
    padded = Blocks(blocks.input_ids, blocks.labels.masked_fill(mask == 0, IGNORE), mask, "prose", "train")
    ours = layer_gradients(model, padded, batch_size=2, progress=False)
    ref = autograd_layer_grads(model, padded)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-7)
    from layerq_nb.tape import KFACFactors, run_tape
    factors = KFACFactors()
    run_tape(model, padded, [factors], labels="sampled", reduction="sum", progress=False)
    assert factors.tokens == 48 + 30


def test_sampled_labels_follow_the_model_distribution():
    """Inverse-CDF sampling: frequencies over 40,000 positions match softmax(logits) within 5 sigma,
    masked targets stay masked, and one block's draw does not depend on its batch-mates."""
    from layerq_nb.tape import _sample_labels
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, -30.0])
    probs = torch.softmax(logits, 0)
    logp = torch.log_softmax(logits, 0).expand(2, 20_000, 5)
    labels = torch.zeros(2, 20_000, dtype=torch.long)
    labels[1, :100] = IGNORE
    drawn = _sample_labels(logp, labels, seeds=[3, 4])
    assert (drawn[1, :100] == IGNORE).all()
    kept = drawn[drawn != IGNORE]
    freq = torch.bincount(kept, minlength=5).double() / kept.numel()
    sigma = (probs.double() * (1 - probs.double()) / kept.numel()).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, probs)
    assert torch.equal(_sample_labels(logp[1:], labels[1:], seeds=[4]), drawn[1:])


def test_reducers_do_not_depend_on_batching(tiny):
    """The reducers add into their sums in place and reuse work buffers: one block per batch and
    three per batch (uneven last batch) give the same gradient, K-FAC, diagonal and EK-FAC sums."""
    from layerq_nb.tape import DiagonalFisher, EKFACCorrection, GradientSum, KFACFactors, run_tape
    model, tok = tiny
    blocks = load_task("code", tok, split="train", n_blocks=4, block_size=32)
    states = []
    for batch_size in (1, 3):
        grads, factors, diag = GradientSum(), KFACFactors(), DiagonalFisher()
        run_tape(model, blocks, [factors, diag], labels="sampled", reduction="sum", batch_size=batch_size,
                 then=[([grads], "data", "mean")], progress=False)
        bases = {k: (torch.linalg.eigh(factors.A(k))[1], torch.linalg.eigh(factors.state[("G", *k)])[1])
                 for k in grads.state}
        if states:   # the same eigenbases for both runs, so the EK-FAC sums are comparable
            bases = states[0][3]
        ek = EKFACCorrection(bases)
        run_tape(model, blocks, [ek], labels="sampled", reduction="sum", batch_size=batch_size, progress=False)
        states.append((grads.state, factors.state, diag.state, bases, ek.state))
    for one, three in zip(states[0][:3] + states[0][4:], states[1][:3] + states[1][4:]):
        assert one.keys() == three.keys()
        for key in one:
            # float32 sums in a different order: agree to 1e-5 of the statistic's own scale
            torch.testing.assert_close(one[key], three[key], rtol=1e-4, atol=1e-5 * float(one[key].abs().max()))


def test_identity_absolute_damping_one_is_the_squared_gradient_norm(tiny):
    model, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=64)
    s = score(model, blocks, curvature="identity", damping=1.0, damping_mode="absolute", progress=False)
    ref = autograd_layer_grads(model, blocks)
    expected = [sum(float((ref[(layer.index, m)].double() ** 2).sum()) for m in layer.linears) for layer in layers(model)]
    np.testing.assert_allclose(s.values, expected, rtol=1e-5)
    gn = score(model, blocks, method="grad_norm", progress=False)
    np.testing.assert_allclose(gn.values, expected, rtol=1e-5)
    assert s.spearman(gn) == pytest.approx(1.0)


def test_tape_restores_the_model(tiny):
    model, tok = tiny
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    score(model, load_task("prose", tok, n_blocks=1, block_size=32), curvature="ekfac", progress=False)
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- exact Gauss-Newton

def test_exact_dense_block_equals_an_independent_gauss_newton(micro):
    model, _, blocks = micro
    ref, names = dense_ggn_reference(model, blocks, layer_index=1)
    grads = autograd_layer_grads(model, blocks)
    layer = layers(model)[1]
    g = {f"{layer.name}.{m}.weight": grads[(1, m)] for m in layer.linears}
    ex = exact_layer(model, blocks, 1, g, damping=1e-3, damping_mode="absolute")
    torch.testing.assert_close(ex.dense.double(), ref, rtol=1e-4, atol=1e-8)
    flat = torch.cat([g[n].reshape(-1) for n in names]).double()
    zeta_ref = float(flat @ torch.linalg.solve(ref + 1e-3 * torch.eye(ref.shape[0], dtype=torch.float64), flat))
    assert ex.zeta2 == pytest.approx(zeta_ref, rel=1e-4)
    s = score(model, blocks, curvature="exact", damping=1e-3, damping_mode="absolute", progress=False)
    assert s.values[1] == pytest.approx(zeta_ref, rel=1e-4)


def test_exact_conjugate_gradients_match_the_dense_solve(micro):
    model, _, blocks = micro
    grads = autograd_layer_grads(model, blocks)
    layer = layers(model)[0]
    g = {f"{layer.name}.{m}.weight": grads[(0, m)] for m in layer.linears}
    dense = exact_layer(model, blocks, 0, g, damping=1e-2, damping_mode="absolute")
    cg = exact_layer(model, blocks, 0, g, damping=1e-2, damping_mode="absolute", max_dense=0, cg_tol=1e-8)
    assert cg.dense is None and 0 < cg.cg_iterations and cg.cg_residual < 1e-8
    assert cg.zeta2 == pytest.approx(dense.zeta2, rel=1e-5)


def test_ggn_vector_product_is_symmetric_positive(micro):
    model, _, blocks = micro
    layer = layers(model)[0]
    shapes = {f"{layer.name}.{m}.weight": mod.weight for m, mod in layer.linears.items()}
    gen = torch.Generator().manual_seed(0)
    u = {n: torch.randn(w.shape, generator=gen) for n, w in shapes.items()}
    v = {n: torch.randn(w.shape, generator=gen) for n, w in shapes.items()}
    gu, gv = ggn_vector_product(model, blocks, 0, u), ggn_vector_product(model, blocks, 0, v)
    dot = lambda a, b: float(sum((a[n] * b[n]).sum() for n in a))       # noqa: E731
    assert dot(u, gv) == pytest.approx(dot(v, gu), rel=1e-4)
    assert dot(u, gu) > 0


# ----------------------------------------------------------------------------- factored curvatures

def test_kfac_is_exact_for_a_single_datum(tiny):
    """One target, and both positions carry the same token, so the last MLP's inputs agree: the
    empirical Fisher of that module is g g^T = (a a^T) (x) (b b^T), which K-FAC and EK-FAC reproduce
    exactly, giving zeta^2 = ||g||^2 / (||g||^2 + lam) (Sherman-Morrison)."""
    model, tok = tiny
    ids = torch.tensor([[65, 65]])
    blocks = Blocks(ids, ids.clone(), torch.ones_like(ids), "single", "train")
    key = (len(layers(model)) - 1, "mlp.down_proj")
    g = layer_gradients(model, blocks, progress=False)[key].double()
    lam = 1e-6
    expected = float((g**2).sum() / ((g**2).sum() + lam))
    for curvature in ("kfac", "ekfac"):
        solve = module_solves(model, blocks, curvature, damping=lam, damping_mode="absolute", fisher="empirical",
                              progress=False).solves[key]
        assert float((g * solve.solve(g.float()).double()).sum()) == pytest.approx(expected, rel=1e-4)


def _module_block(dense, layer, module_name):
    """The (module, module) diagonal block of a dense layer matrix, in vec(W) (row-major) order."""
    start = 0
    for name, mod in layer.linears.items():
        size = mod.weight.numel()
        if name == module_name:
            return dense[start:start + size, start:start + size]
        start += size
    raise KeyError(module_name)


@pytest.mark.parametrize("modules", [("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), None])
def test_ekfac_fits_the_gauss_newton_at_least_as_well_as_kfac(micro, modules):
    """Frobenius distance to the exact Gauss-Newton block, per module of the last layer. For its MLP
    a position's output feeds only that position's loss, so the per-token statistics are unbiased
    for the Gauss-Newton block and EK-FAC (the best diagonal in K-FAC's eigenbasis) must win; over
    all modules attention's cross-position terms enter too, and it still should."""
    model, tok, _ = micro
    blocks = load_task("prose", tok, split="train", n_blocks=48, block_size=12)
    ref, _ = dense_ggn_reference(model, blocks, layer_index=1)
    layer = layers(model)[1]
    errors = {}
    for curvature in ("kfac", "ekfac"):
        solves = module_solves(model, blocks, curvature, damping=0.0, damping_mode="absolute", progress=False).solves
        total = 0.0
        for name, mod in layer.linears.items():
            if modules is not None and name not in modules:
                continue
            d_out, d_in = mod.weight.shape
            basis = torch.eye(d_out * d_in).view(-1, d_out, d_in)
            approx = torch.stack([solves[(1, name)].matvec(e).reshape(-1) for e in basis], dim=1).double()
            total += float(torch.linalg.norm(approx - _module_block(ref, layer, name)) ** 2)
        errors[curvature] = total
    assert errors["ekfac"] <= errors["kfac"], errors


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 12), lam=st.floats(1e-3, 10.0))
def test_zeta2_dominates_the_gradient_norm_score(seed, dim, lam):
    """(g^T g)^2 / (g^T H g) <= g^T H^-1 g for any PSD H (Cauchy-Schwarz in the H inner product)."""
    gen = np.random.default_rng(seed)
    m = gen.normal(size=(dim, dim))
    h = m @ m.T + lam * np.eye(dim)
    g = gen.normal(size=dim)
    assert (g @ g) ** 2 / (g @ h @ g) <= g @ np.linalg.solve(h, g) * (1 + 1e-9)


def test_domination_holds_for_the_kfac_blocks_of_a_model(tiny):
    model, tok = tiny
    blocks = load_task("code", tok, split="train", n_blocks=2, block_size=64)
    grads = layer_gradients(model, blocks, progress=False)
    for key, solve in module_solves(model, blocks, "kfac", progress=False).solves.items():
        g = grads[key]
        zeta2 = float((g * solve.solve(g)).sum())
        best_along_gradient = float((g * g).sum()) ** 2 / float((g * solve.matvec(g)).sum())
        assert best_along_gradient <= zeta2 * (1 + 1e-4)


# ----------------------------------------------------------------------------- LayerScores

def test_layer_scores_roundtrip_and_helpers(tmp_path):
    s = LayerScores("zeta2[kfac]", np.array([3.0, 1.0, 0.0, 6.0]), ("l0", "l1", "l2", "l3"), {"task": "prose"})
    np.testing.assert_allclose(s.q, [0.3, 0.1, 0.0, 0.6])
    assert s.top(2) == [("l3", 0.6), ("l0", 0.3)]
    again = LayerScores.load(s.save(tmp_path / "s.json"))
    np.testing.assert_array_equal(again.values, s.values)
    assert again.metadata == {"task": "prose"} and again.names == s.names
    assert s.spearman(again) == pytest.approx(1.0) and s.kendall(again) == pytest.approx(1.0)
    import matplotlib
    matplotlib.use("Agg")
    assert s.plot().get_title() == "zeta2[kfac] on prose"
    with pytest.raises(ValueError, match="not finite"):
        LayerScores("x", np.array([1.0, np.nan]), ("a", "b"))


# ----------------------------------------------------------------------------- bad input

def test_bad_scoring_input(tiny):
    model, tok = tiny
    blocks = load_task("prose", tok, n_blocks=1, block_size=32)
    masked = Blocks(blocks.input_ids, torch.full_like(blocks.labels, IGNORE), blocks.attention_mask, "prose", "train")
    with pytest.raises(ValueError, match="every label .* is masked"):
        score(model, masked, progress=False)
    with pytest.raises(ValueError, match="no blocks"):
        score(model, blocks.subset([]), progress=False)
    with pytest.raises(ValueError, match="unknown curvature 'hessian'"):
        score(model, blocks, curvature="hessian", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        score(model, blocks, method="vibes", progress=False)
    with pytest.raises(ValueError, match="granularity"):
        score(model, blocks, curvature="exact", granularity="module", progress=False)


def test_module_granularity_sums_to_block(tiny):
    model, tok = tiny
    blocks = load_task("prose", tok, n_blocks=2, block_size=32)
    per_block = score(model, blocks, curvature="diag", progress=False)
    per_module = score(model, blocks, curvature="diag", granularity="module", progress=False)
    assert len(per_module) == 7 * len(per_block)
    np.testing.assert_allclose(per_module.values.reshape(len(per_block), 7).sum(1), per_block.values, rtol=1e-10)


def test_newton_step_restores_weights(tiny):
    model, tok = tiny
    before = [p.detach().clone() for p in model.parameters()]
    step = newton_step(model, load_task("prose", tok, n_blocks=2, block_size=32), layer=1, curvature="diag")
    assert step.predicted == pytest.approx(step.zeta2 / 2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="layer 7 out of range"):
        newton_step(model, load_task("prose", tok, n_blocks=1, block_size=32), layer=7)


# ----------------------------------------------------------------------------- real model

@pytest.mark.real_model
def test_real_model_newton_step_prediction(real):
    """On the real model a short step along the Newton direction lowers the loss by what the quadratic
    model predicts (first order); the full step (scale 1) overshoots when the Fisher comes from a few
    sequences (it is low rank there), which the curvature tutorial shows."""
    model, tok = real
    blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=128)
    full = newton_step(model, blocks, layer=5, curvature="ekfac", damping=1.0)
    small = newton_step(model, blocks, layer=5, curvature="ekfac", damping=1.0, scale=2e-3 / full.zeta2)
    assert small.actual > 0 and 0.7 < small.actual / small.predicted < 1.3, small
    assert full.loss_before == pytest.approx(small.loss_before)


@pytest.mark.real_model
def test_real_model_scores_differ_by_task(real):
    """Same model, different task, different layer scores (diag curvature keeps this test quick;
    benchmarks/task_scores.py measures K-FAC and EK-FAC on all three tasks)."""
    model, tok = real
    scores = {task: score(model, load_task(task, tok, split="train", n_blocks=2, block_size=128),
                          curvature="diag", progress=False) for task in ("prose", "arithmetic")}
    rho = scores["prose"].spearman(scores["arithmetic"])
    l1 = float(np.abs(scores["prose"].q - scores["arithmetic"].q).sum())
    assert len(scores["prose"]) == 30
    assert rho < 0.95 and l1 > 0.1, (rho, l1)


# ----------------------------------------------------------------------------- distributed

@pytest.mark.parametrize("curvature", ["ekfac"])
def test_two_processes_equal_one(tiny, tmp_path, curvature):
    """torchrun with 2 gloo processes shards the blocks; the summed statistics give the same scores."""
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.fail("torchrun is missing: it ships with torch")
    model, tok = tiny
    args = ["score", "--model", "tiny-llama", "--task", "prose", "--blocks", "5", "--block-size", "32",
            "--batch-size", "2", "--curvature", curvature]
    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29517", "-m", "layerq_nb.cli", *args,
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    two = LayerScores.load(out)
    one = score(model, load_task("prose", tok, n_blocks=5, block_size=32), curvature=curvature, batch_size=2,
                progress=False)
    np.testing.assert_allclose(two.values, one.values, rtol=1e-4)
    assert "2 processes" in run.stdout


def test_gpt2_conv1d_gradients_and_exact_layout():
    """GPT-2 stores Conv1D weights transposed; the tape's (d_out, d_in) gradients must still match."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=4, n_layer=2, n_head=2, n_positions=32)).eval()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    blocks = Blocks(ids, ids.clone(), torch.ones_like(ids), "toy", "train")
    ours = layer_gradients(model, blocks, progress=False)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    for layer in layers(model):
        for name, mod in layer.linears.items():
            torch.testing.assert_close(ours[(layer.index, name)], mod.weight.grad.T, rtol=1e-4, atol=1e-7)
    grads = {f"{layer.name}.{m}.weight": mod.weight.grad.detach().clone()
             for layer in layers(model) for m, mod in layer.linears.items()}
    model.zero_grad()
    s = score(model, blocks, curvature="exact", damping=0.1, damping_mode="absolute", progress=False)
    ref, names = dense_ggn_reference(model, blocks, layer_index=1)     # in the parameters' own layout
    flat = torch.cat([grads[n].reshape(-1) for n in names]).double()
    expected = float(flat @ torch.linalg.solve(ref + 0.1 * torch.eye(ref.shape[0], dtype=torch.float64), flat))
    assert s.values[1] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("device, backend, pinned", [("cpu", "gloo", None), ("auto", "nccl", 1), ("cuda", "nccl", 1)])
def test_torchrun_picks_nccl_only_when_the_processes_score_on_cuda(monkeypatch, device, backend, pinned):
    # a GPU machine, faked: `layerq score --device cpu` must stay on gloo (NCCL cannot reduce CPU tensors)
    import torch.distributed as dist

    from layerq_nb import cli
    chosen, pinned_to = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", pinned_to.append)
    monkeypatch.setattr(dist, "init_process_group", chosen.append)
    assert cli._init_distributed(device) is dist
    assert chosen == [backend] and pinned_to == ([] if pinned is None else [pinned])
