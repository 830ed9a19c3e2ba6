"""The `layerq` command: `layerq demo` runs the pipeline on the default real model; `layerq doctor` reports versions.

Every argument and output path is checked before a model loads, and every failure is one line on
stderr with a non-zero exit code (2 for bad input or a failing environment, 130 for Ctrl-C, 1 for an
unexpected error); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import errno
import importlib.metadata
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "torchvision_problem"]

EPILOG = """examples:
  layerq demo                          real SmolLM2-135M: the pipeline, score -> q -> allocate / prune
  layerq demo --json                   the same content as JSON
  layerq demo --blocks 16 --tasks prose code
  layerq score --task arithmetic --curvature ekfac --out scores.json
  torchrun --nproc_per_node=2 -m layerq_nb.cli score --task prose    same scores, blocks sharded
  layerq prune --sparsity 0.5 --map mdl-zeta2 --method wanda     per-layer table, perplexity, JSON
  layerq prune --scores scores.json --save pruned/     reuse scores; keep the pruned model
  layerq allocate --task arithmetic --rank 2 --train   LoRA ranks: uniform vs MDL(zeta^2), short fine-tuning
  layerq allocate --scores scores.json --save adapter/  peft adapter_config.json with rank_pattern
  layerq doctor                        versions of the stack, the device, where the model comes from
  layerq lab                           JupyterLab on the tutorials
"""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("layerq_nb", "torch", "transformers", "datasets", "cvxpy", "ipywidgets", "anywidget",
                 "jupyterlab", "peft"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# torch 2.N pairs with torchvision 0.(N + 15), built for the same platform (the "+cpu" / "+cu128" tag)
_TORCHVISION_OFFSET = 15
KRONFLUENCE_INSTALL = 'pip install -e ".[kronfluence]" && pip install --no-deps "kronfluence==1.0.1"'


def _release(version: str) -> tuple[tuple[int, ...], str]:
    base, _, local = version.partition("+")
    parts = []
    for piece in base.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts), local


def torchvision_problem(torch_version: str | None = None, torchvision_version: str | None = None,
                        try_import: bool = True) -> str | None:
    """None when torchvision is absent or matches torch; otherwise one line naming the mismatch and its
    fix. layerq_nb never needs torchvision, but a mismatched one breaks `import transformers` (its
    compiled operators, e.g. torchvision::nms, are missing from the installed torch)."""
    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    torch_version = torch_version or version("torch")
    torchvision_version = torchvision_version or version("torchvision")
    if torchvision_version is None or torch_version is None:
        return None
    (t_major, t_minor), t_local = _release(torch_version)
    (v_major, v_minor), v_local = _release(torchvision_version)
    expected = f"0.{t_minor + _TORCHVISION_OFFSET}" if t_major == 2 else None
    index = f"https://download.pytorch.org/whl/{t_local}" if t_local else "PyPI (no --index-url)"
    fix = ("Fix: pip uninstall -y torchvision (layerq_nb and kronfluence run without it), or install the matching "
           f"build: pip install \"torchvision=={expected}.*\" --index-url {index}" if expected else
           "Fix: pip uninstall -y torchvision (layerq_nb and kronfluence run without it)")
    why = None
    if expected and f"{v_major}.{v_minor}" != expected:
        why = f"torchvision {torchvision_version} does not match torch {torch_version} (which pairs with {expected}.x)"
    elif t_local != v_local:
        why = (f"torchvision {torchvision_version} is a different build from torch {torch_version} "
               f"({v_local or 'PyPI default'} vs {t_local or 'PyPI default'})")
    elif try_import:
        try:
            run = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True,
                                 timeout=120)
            if run.returncode != 0:
                last = (run.stderr.strip().splitlines() or ["?"])[-1]
                why = f"torchvision {torchvision_version} does not import with torch {torch_version} ({last})"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return f"{why}: transformers (and so load_model) may fail to import. {fix}" if why else None


def cmd_doctor(args: argparse.Namespace) -> int:
    from .models import SHIPPED_GGUF, SHORT_NAMES, CacheError, cache_dir, cached_folder, check_cache, pick_device
    for name, version in _versions().items():
        print(f"{name:>14}  {version}")
    try:
        tv = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        tv = "not installed (not needed)"
    print(f"{'torchvision':>14}  {tv}")
    try:
        kf = importlib.metadata.version("kronfluence")
    except importlib.metadata.PackageNotFoundError:
        kf = f"not installed (optional, for benchmarks: {KRONFLUENCE_INSTALL})"
    print(f"{'kronfluence':>14}  {kf}")
    print(f"{'device':>14}  {pick_device('auto')}")
    print(f"{'cache':>14}  {cache_dir()}")
    problems = []
    for short in SHORT_NAMES:
        cached = cached_folder(short)
        if cached.exists():
            try:
                size = sum(f.stat().st_size for f in cached.iterdir() if f.is_file()) if cached.is_dir() else 0
                if not args.quick and size > 100e6:      # reading it all takes a few seconds on a cold disk
                    print(f"{'':>14}  (verifying {short}: reading {size / 1e9:.1f} GB to check its CRC-32s)",
                          file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                with_manifest = check_cache(cached, full=not args.quick)
                checked = ("structure only: written before manifests" if not with_manifest else
                           "sizes only (--quick)" if args.quick else
                           f"CRC-32 of {size / 1e9:.2f} GB verified in {time.perf_counter() - t0:.1f} s")
                where = f"cached at {cached} ({checked})"
            except (CacheError, OSError) as err:
                where = f"CORRUPT cache at {cached} ({err})"
                problems.append(f"{short}: the cache entry is corrupt ({err}); delete it: rm -r '{cached}'")
        else:
            where = "not cached"
        if short in SHIPPED_GGUF:
            pkg = SHIPPED_GGUF[short][0]
            shipped = importlib.util.find_spec(pkg) is not None
            where += f"; offline weights ({pkg.replace('_', '-')}) {'installed' if shipped else 'missing'}"
        print(f"{short:>14}  {where}")
    tv_problem = torchvision_problem()
    if tv_problem:
        problems.append(tv_problem)
    print(f"{'status':>14}  " + ("; ".join(problems) if problems else "ok"))
    return 0


def lab_command(folder: str | os.PathLike, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={folder}", *extra]


def cmd_lab(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from .lab import tutorials as learner
    from .tutorials import tutorials, tutorials_folder
    folder = tutorials_folder()
    if folder.name == "_notebooks":       # inside site-packages: the learner works on copies
        # made where the launcher's "open" looks (<dir>/layerq-tutorials), so that it reuses them
        # instead of making a second set; a copy that exists holds the learner's work and is kept
        folder = Path(args.dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        made = [learner.open_copy(number, root=folder) for number in tutorials()]
        learner.syllabus_copy(root=folder)
        print(f"tutorials in {folder / learner.DEFAULT_FOLDER} ({sum(c.created for c in made)} copied, "
              f"{sum(not c.created for c in made)} kept)")
    command = lab_command(folder, args.jupyter_args)
    print(" ".join(command))
    if args.dry_run:
        return 0
    if importlib.util.find_spec("jupyterlab") is None:
        raise ImportError('JupyterLab is not installed: pip install "layerq_nb[notebooks]"')
    return subprocess.call(command)


# ----------------------------------------------------------------------------- checks before any loading

class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (and the pointer to --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole(name: str, value, low: int):
    if value is None or value < low:
        raise ValueError(f"--{name} must be >= {low}, got {value}")


def _finite(name: str, value, low: float, strict: bool = False, high: float | None = None):
    ok = math.isfinite(value) and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ValueError(f"--{name} must be a finite number {bound}, got {value}")


def _check_model(name: str):
    from .models import SHORT_NAMES, TINY
    path = Path(name).expanduser()
    if name in SHORT_NAMES or name == TINY or path.is_dir():
        return
    if path.exists():
        raise ValueError(f"--model {name} is a file: give a folder with config.json and the weights, a short name "
                         f"({', '.join(SHORT_NAMES)}) or a Hugging Face id")
    if name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        raise ValueError(f"--model {name}: no such folder")
    if "/" not in name:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join([*SHORT_NAMES, TINY])}, "
                         "a Hugging Face id such as 'HuggingFaceTB/SmolLM2-135M', or a local folder")


def _check_out(out: str | None):
    """The output file can be written: not a folder, in an existing folder we may create files in."""
    if out is None:
        return
    path = Path(out).expanduser()
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder: give a file name, e.g. --out {path / 'result.json'}")
    if path.exists() and not path.is_file():      # /dev/null and the like: written in place
        return
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"--out {out} is not writable")
    from .artefacts import check_parent
    check_parent(path, "--out", shown=out)


def _write_out(out: str, text: str):
    """Write `text` to `out` atomically where it is a regular file (a full disk leaves no half file)."""
    from .scores import _write_text
    _write_text(Path(out).expanduser(), text)


def _check_common(args):
    from .data import check_task
    from .models import pick_device
    _check_model(args.model)
    pick_device(args.device)
    for name in ("blocks", "batch_size", "eval_blocks"):
        if hasattr(args, name):
            _whole(name.replace("_", "-"), getattr(args, name), 1)
    if hasattr(args, "block_size"):
        _whole("block-size", args.block_size, 2)
    tasks = getattr(args, "tasks", None) or [args.task]
    for task in tasks:
        check_task(task, getattr(args, "split", "train"), load=False)
    _check_out(getattr(args, "out", None))
    for task in tasks:            # hf: datasets last: loading one is the slowest check (it probes the hub)
        if task.startswith("hf:"):
            check_task(task, getattr(args, "split", "train"))


def _check_score(args):
    if not (math.isfinite(args.damping) and args.damping > 0):     # 0 leaves a singular curvature: nan gains
        raise ValueError(f"--damping must be a finite number > 0, got {args.damping}: try --damping 0.1 (the "
                         "default) or larger")
    _check_common(args)


def _check_scores_file(path: str):
    """A readable LayerScores file (its model is checked once the model is loaded)."""
    from .scores import LayerScores
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--scores {path}: no such file (write one with layerq score --out {path})")
    LayerScores.load(file)


def _check_save(args):
    if getattr(args, "save", None):
        from .artefacts import check_folder
        check_folder(args.save)


# the map kinds whose per-layer scores are layer scores (zeta^2, LayerIF), as a --scores file holds
_LAYER_SCORE_KINDS = ("layerif", "mdl")


def _check_prune(args):
    from .pruning import MAP_SPECS, MAX_SPARSITY, map_kind
    _finite("sparsity", args.sparsity, 0.0, high=MAX_SPARSITY)
    _finite("band", args.band, 0.0)
    if args.map.removesuffix("-reverse") not in MAP_SPECS:
        raise ValueError(f"unknown map {args.map!r}: use one of {', '.join(MAP_SPECS)} (or <map>-reverse)")
    if args.scores:
        if map_kind(args.map) not in _LAYER_SCORE_KINDS:
            scored = [spec for spec in MAP_SPECS if map_kind(spec) in _LAYER_SCORE_KINDS]
            raise ValueError(f"the {args.map} map uses no layer scores: --scores goes with {', '.join(scored)}")
        _check_scores_file(args.scores)
    _check_save(args)
    _check_common(args)


def _check_demo(args):
    from .pruning import MAX_SPARSITY
    _whole("score-blocks", args.score_blocks, 1)
    _whole("rank", args.rank, 1)
    _finite("beta", args.beta, 0.0, strict=True)
    _finite("sparsity", args.sparsity, 0.0, high=MAX_SPARSITY)
    _finite("band", args.band, 0.0)
    if args.score_tasks[0] == args.score_tasks[1]:
        raise ValueError(f"--score-tasks needs two different tasks, got {args.score_tasks[0]} twice")
    _check_common(args)
    tasks = args.tasks
    args.tasks = args.score_tasks
    try:
        _check_common(args)
    finally:
        args.tasks = tasks


def _check_allocate(args):
    _whole("rank", args.rank, 1)
    if args.budget is not None:
        _whole("budget", args.budget, 1)
    _finite("beta", args.beta, 0.0, strict=True)
    _finite("lr", args.lr, 0.0, strict=True)
    _whole("steps", args.steps, 0)
    if args.scores not in ("zeta2", "layerif"):
        _check_scores_file(args.scores)
    if (args.save or args.train) and importlib.util.find_spec("peft") is None:
        raise ImportError('--save and --train need peft: pip install "layerq_nb[peft]"')
    _check_save(args)
    _check_common(args)


def _check_course(args):
    """`course build|grade|render`: the tutorial numbers and the time limits, before anything is written."""
    from .course.editions import tutorial_paths
    if args.course_command == "grade":
        _whole("cell-timeout", args.cell_timeout, 1)
        _finite("notebook-timeout", args.notebook_timeout, 0.0, strict=True)
        return
    if args.course_command == "render":
        _whole("timeout", args.timeout, 1)
    if args.notebooks is not None:
        tutorial_paths(args.notebooks)
    if Path(args.out).expanduser().exists() and not Path(args.out).expanduser().is_dir():
        raise ValueError(f"OUT {args.out} is a file: give a folder (it is created)")


# ----------------------------------------------------------------------------- commands

def _demo_pipeline(args, steps) -> dict:
    """Every number `layerq demo` shows, as plain data (the text and --json views render this). Each
    step calls the package's own functions; `steps` is the progress bar advanced after each."""
    import numpy as np

    from . import mdl, reference
    from .adapt import lora_rank_pattern, rank_caps, rank_costs
    from .data import load_task
    from .evaluate import generate, perplexity
    from .models import layers, load_model, model_facts
    from .pruning import layer_sizes, pruned, sparsity_map, weight_fingerprint
    from .scoring import score

    out: dict = {}

    def step(name):
        steps.set_description(name)

    def done(key, t0):
        out.setdefault("seconds", {})[key] = round(time.perf_counter() - t0, 1)
        steps.update()

    t0 = time.perf_counter()
    step("loading the model")
    model, tokenizer = load_model(args.model, device=args.device)
    found, facts = layers(model), model_facts(model)
    out["model"] = dict(name=args.model, family=facts.family, layers=len(found), hidden=model.config.hidden_size,
                        parameters=facts.parameters, source=facts.source, device=facts.device,
                        load_seconds=round(facts.load_seconds, 1),
                        linear_maps=list(found[0].linears), layer_weights=found[0].n_params)
    done("model", t0)

    t0 = time.perf_counter()
    step("held-out perplexity")
    rows = []
    for task in args.tasks:
        blocks = load_task(task, tokenizer, split="test", n_blocks=args.blocks, block_size=args.block_size)
        ppl = perplexity(model, blocks, batch_size=args.batch_size)
        rows.append(dict(task=task, tokens=blocks.n_targets, loss=math.log(ppl), perplexity=ppl))
    out["perplexity"] = dict(blocks=args.blocks, block_size=args.block_size, rows=rows)
    done("perplexity", t0)

    t0 = time.perf_counter()
    step("layer gains zeta^2")
    scores, train = {}, {}
    for task in args.score_tasks:
        train[task] = load_task(task, tokenizer, split="train", n_blocks=args.score_blocks, block_size=args.block_size)
        scores[task] = score(model, train[task], curvature=args.curvature, batch_size=1)
    first, second = (scores[t] for t in args.score_tasks)
    shift = np.abs(first.q - second.q)
    out["scores"] = dict(curvature=args.curvature, blocks=args.score_blocks, block_size=args.block_size,
                         tasks=list(args.score_tasks), q={t: s.q.tolist() for t, s in scores.items()},
                         zeta2={t: s.values.tolist() for t, s in scores.items()},
                         spearman=first.spearman(second), largest_shift_layer=int(np.argmax(shift)),
                         total_variation=float(shift.sum() / 2))
    done("scores", t0)

    t0 = time.perf_counter()
    step("program A: LoRA ranks")
    q_task = args.score_tasks[-1]
    cost, caps = rank_costs(model), rank_caps(model)
    budget = int(args.rank * cost.sum())
    exact = mdl.allocate(scores[q_task].q, budget, cost=cost, beta=args.beta, lower=1, upper=caps)
    cvx = reference.allocate(scores[q_task].q, budget, cost=cost, beta=args.beta, lower=1, upper=caps)
    integer = lora_rank_pattern(model, scores[q_task], budget, beta=args.beta)
    out["allocation"] = dict(task=q_task, budget=budget, uniform_rank=args.rank, beta=args.beta,
                             ranks=integer.ranks.tolist(), parameters=integer.parameters,
                             continuous=exact.x.tolist(), nu=exact.nu, kkt_residual=exact.kkt_residual,
                             cvxpy_status=cvx.solver.status + (", polished" if cvx.solver.polished else ""), cvxpy_gap=float(np.max(np.abs(exact.x - cvx.x))),
                             objective_gap=float(exact.objective - cvx.objective))
    done("allocation", t0)

    t0 = time.perf_counter()
    step("program B: pruning with Wanda")
    p_task = args.score_tasks[0]
    evaluation = load_task(p_task, tokenizer, split="test", n_blocks=args.blocks, block_size=args.block_size)
    sizes = layer_sizes(model)
    maps = {"uniform": sparsity_map("uniform", args.sparsity, sizes),
            "mdl": sparsity_map("mdl", args.sparsity, sizes, scores[p_task], band=args.band)}
    before = weight_fingerprint(model)
    dense = next((r["perplexity"] for r in rows if r["task"] == p_task), None)
    if dense is None:
        dense = perplexity(model, evaluation, batch_size=args.batch_size)
    pruned_ppl, achieved = {}, {}
    for name, per_layer in maps.items():
        with pruned(model, per_layer, "wanda", blocks=train[p_task], batch_size=args.batch_size) as report:
            pruned_ppl[name] = perplexity(model, evaluation, batch_size=args.batch_size)
            achieved[name] = report.global_sparsity
    out["pruning"] = dict(task=p_task, sparsity=args.sparsity, band=args.band, method="wanda",
                          calibration=dict(task=p_task, split="train", blocks=args.score_blocks,
                                           block_size=args.block_size),
                          map=maps["mdl"].tolist(), dense=dense, uniform=pruned_ppl["uniform"], mdl=pruned_ppl["mdl"],
                          achieved=achieved, weights_restored=weight_fingerprint(model) == before)
    done("pruning", t0)

    if args.question:
        step("generating an answer")
        t0 = time.perf_counter()
        out["answer"] = dict(question=args.question, answer=generate(model, tokenizer, args.question))
        done("answer", t0)
    out["next"] = ["layerq lab", "layerq score --help", "layerq prune --help", "layerq allocate --help"]
    return out


_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _bar(value: float, top: float, width: int) -> str:
    """A horizontal bar of value / top of `width` characters, in eighths of a character (ASCII '#'
    when stdout cannot encode block characters)."""
    fill = 0.0 if top <= 0 else max(0.0, min(1.0, value / top)) * width
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        _EIGHTHS.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ("#" * round(fill)).ljust(width)
    whole, part = int(fill), int(round((fill - int(fill)) * 8))
    if part == 8:
        whole, part = whole + 1, 0
    return ("█" * whole + (_EIGHTHS[part] if part else "")).ljust(width)


def _print_demo(r: dict):
    m, p, s, a, b = r["model"], r["perplexity"], r["scores"], r["allocation"], r["pruning"]
    sec = r["seconds"]
    print("layerq demo: the whole pipeline on a real model: score the layers -> q -> allocate / prune -> the effect")
    print()
    print(f"1. the model ({sec['model']} s)")
    print(f"   {m['name']}: {m['family']}, {m['layers']} decoder layers, hidden {m['hidden']}, "
          f"{m['parameters'] / 1e6:.1f}M parameters, on {m['device']}")
    print(f"   weights from {m['source']} (loaded in {m['load_seconds']} s)")
    print(f"   each layer's linear maps ({m['layer_weights'] / 1e6:.2f}M weights): {', '.join(m['linear_maps'])}")
    print("   -> what every later step scores, adapts and prunes")
    print()
    print(f"2. held-out perplexity per task ({sec['perplexity']} s): exp(mean next-token loss) on {p['blocks']} "
          f"test blocks of {p['block_size']} tokens; lower is better")
    print(f"   {'task':<12}{'tokens':>8}{'loss':>8}{'perplexity':>12}")
    for row in p["rows"]:
        print(f"   {row['task']:<12}{row['tokens']:>8}{row['loss']:>8.3f}{row['perplexity']:>12.2f}")
    print()
    t1, t2 = s["tasks"]
    print(f"3. layer gain zeta_k^2 = g_k^T H_kk^-1 g_k per layer, as q_k = zeta_k^2 / sum_j zeta_j^2 ({sec['scores']} s)")
    print(f"   ({s['curvature']} curvature, {s['blocks']} training block{'s' * (s['blocks'] > 1)} of {s['block_size']} "
          "tokens per task): "
          "how much the loss can drop by changing layer k alone")
    top = max(max(s["q"][t1]), max(s["q"][t2]))
    width = 22
    print(f"   {'layer':>5}  {t1:<{width + 8}}{t2}")
    for k, (x, y) in enumerate(zip(s["q"][t1], s["q"][t2])):
        mark = "  <- largest shift" if k == s["largest_shift_layer"] else ""
        print(f"   {k:>5}  {_bar(x, top, width)} {x:5.3f}  {_bar(y, top, width)} {y:5.3f}{mark}")
    print(f"   the tasks rank the layers differently: Spearman {s['spearman']:+.2f}, "
          f"{100 * s['total_variation']:.0f}% of q moves between layers from {t1} to {t2}")
    print()
    print(f"4. program A: LoRA ranks r_k for a budget of {a['budget']:,} parameters (rank {a['uniform_rank']} "
          f"everywhere), q from {a['task']} ({sec['allocation']} s)")
    print("   max sum_k q_k log(1 + r_k / beta) s.t. sum_k c_k r_k = budget: r_k = clip(q_k / (nu c_k) - beta, 1, cap_k)")
    print(f"   uniform  {' '.join(str(a['uniform_rank']) for _ in a['ranks'])}")
    print(f"   MDL      {' '.join(map(str, a['ranks']))}  ({a['parameters']:,} parameters, whole ranks)")
    print(f"   KKT residual {a['kkt_residual']:.1e}; largest gap to cvxpy ({a['cvxpy_status']}) "
          f"{a['cvxpy_gap']:.1e} ranks, objective gap {a['objective_gap']:+.1e}: the closed form is the optimum")
    print()
    print(f"5. program B: per-layer sparsity at {100 * b['sparsity']:.0f}% from q on {b['task']}, pruned with Wanda "
          f"({sec['pruning']} s)")
    print("   min sum_k q_k (-log(1 - s_k)) s.t. the global sparsity: low-gain layers lose more weights "
          f"(s_k within {100 * b['sparsity']:.0f} +/- {100 * b['band']:.0f}%)")
    print("   s_k %    " + " ".join(f"{100 * x:.0f}" for x in b["map"]))
    print(f"   {b['task']} test perplexity: dense {b['dense']:.2f} -> uniform {100 * b['sparsity']:.0f}% "
          f"{b['uniform']:.2f} -> MDL map {b['mdl']:.2f}")
    print(f"   weights restored after pruning: {'yes (bit-identical)' if b['weights_restored'] else 'NO'}")
    print()
    if "answer" in r:
        print(f"   question {r['answer']['question']}")
        print(f"   answer   {r['answer']['answer']}")
        print()
    print("6. next: `layerq lab` opens the tutorials (00-07) in JupyterLab, where every step above is a widget;")
    print("   `layerq score|prune|allocate --help` run each step on your task and save what it finds (--out, --save)")


def cmd_demo(args: argparse.Namespace) -> int:
    import json

    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    with tqdm(total=5 + bool(args.question), desc="layerq demo", unit="step", leave=False) as steps:
        report = _demo_pipeline(args, steps)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_demo(report)
        print(f"\n(total {report['seconds']['total']} s)")
    return 0


def _init_distributed(device: str = "auto"):
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL when the processes score on CUDA
    (`device` auto or cuda, and a GPU present), gloo otherwise: `--device cpu` on a GPU machine stays on
    gloo, which reduces CPU tensors (NCCL cannot)."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist
    on_cuda = torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda"))
    backend = "nccl" if on_cuda else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist


def cmd_score(args: argparse.Namespace) -> int:
    from .data import load_task
    from .models import load_model
    from .scoring import score

    dist = _init_distributed(args.device)
    rank = dist.get_rank() if dist else 0
    try:
        device = args.device
        if dist and device == "auto":
            import torch
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        model, tokenizer = load_model(args.model, device=device)
        blocks = load_task(args.task, tokenizer, split=args.split, n_blocks=args.blocks, block_size=args.block_size,
                           seed=args.seed)
        t0 = time.perf_counter()
        result = score(model, blocks, method=args.method, curvature=args.curvature, damping=args.damping,
                       damping_mode=args.damping_mode, granularity=args.granularity, fisher=args.fisher,
                       batch_size=args.batch_size, seed=args.seed, progress=rank == 0)
        seconds = time.perf_counter() - t0
    finally:
        if dist:
            dist.barrier()
    if rank == 0:
        world = dist.get_world_size() if dist else 1
        print(f"{result.method} on {args.task} ({blocks.n_targets} tokens, {world} process{'es' * (world > 1)}, "
              f"{seconds:.1f} s)")
        print(f"  {'layer':<24}{'value':>14}{'q':>9}")
        for name, value, q in zip(result.names, result.values, result.q):
            print(f"  {name:<24}{value:>14.5g}{q:>9.4f}")
        if args.out:
            from .artefacts import save_scores
            save_scores(result, model, args.out)
            print(f"wrote {args.out} (prune and allocate take it as --scores {args.out})")
    if dist:
        dist.destroy_process_group()
    return 0


def _model_train_validation(args, loaded=None):
    """The model, `args.blocks` training blocks and half as many (at least 2) validation blocks of the task;
    `loaded(model)` runs in between, for checks that need the model's shapes but no data."""
    from .data import load_task
    from .models import load_model
    model, tokenizer = load_model(args.model, device=args.device)
    if loaded is not None:
        loaded(model)
    train = load_task(args.task, tokenizer, split="train", n_blocks=args.blocks, block_size=args.block_size)
    validation = load_task(args.task, tokenizer, split="validation", n_blocks=max(2, args.blocks // 2),
                           block_size=args.block_size)
    return model, tokenizer, train, validation


def cmd_prune(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .data import load_task
    from .evaluate import perplexity
    from .models import layers
    from .pruning import map_functions, pruned

    model, tokenizer, calibration, validation = _model_train_validation(args)
    evaluation = load_task(args.task, tokenizer, split="test", n_blocks=args.eval_blocks, block_size=args.block_size)
    if args.scores:
        from .artefacts import load_scores
        from .pruning import layer_sizes, map_kind, sparsity_map
        scores = load_scores(args.scores, model)
        per_layer = sparsity_map(map_kind(args.map), args.sparsity, layer_sizes(model), scores, band=args.band,
                                 reverse=args.map.endswith("-reverse"))
    else:
        per_layer = map_functions(model, calibration, validation, [args.map], band=args.band)[args.map](args.sparsity)
    dense = perplexity(model, evaluation, args.batch_size, progress=False)
    with pruned(model, per_layer, args.method, blocks=calibration, batch_size=args.batch_size) as report:
        ppl = perplexity(model, evaluation, args.batch_size, progress=False)
        if args.save:
            from .artefacts import save_pruned
            save_pruned(model, tokenizer, args.save, dict(
                model=args.model, map=args.map, method=args.method, sparsity=args.sparsity, band=args.band,
                scores=args.scores, target=report.target.tolist(), per_layer=report.achieved.tolist(),
                global_sparsity=report.global_sparsity, layers=[layer.name for layer in layers(model)],
                calibration=dict(task=args.task, split="train", blocks=args.blocks, block_size=args.block_size),
                evaluation=dict(task=args.task, split="test", blocks=args.eval_blocks, block_size=args.block_size),
                dense_perplexity=dense, perplexity=ppl))
    print(f"{'layer':<18}{'target':>8}{'zeros':>8}")
    for layer, target, got in zip(layers(model), report.target, report.achieved):
        print(f"{layer.name:<18}{target:>8.3f}{got:>8.3f}")
    print(f"global sparsity {report.global_sparsity:.4f} (asked {args.sparsity}); {args.task} test perplexity "
          f"dense {dense:.2f} -> {args.method} + {args.map} {ppl:.2f}  ({args.eval_blocks} blocks x {args.block_size})")
    if args.out:
        _write_out(args.out, json.dumps(dict(
            model=args.model, task=args.task, method=args.method, map=args.map, sparsity=args.sparsity,
            achieved=report.global_sparsity, dense_perplexity=dense, perplexity=ppl, target=report.target.tolist(),
            per_layer=np.round(report.achieved, 6).tolist(), layers=[layer.name for layer in layers(model)]), indent=1))
        print(f"wrote {args.out}")
    if args.save:
        print(f"saved the pruned model to {args.save} (AutoModelForCausalLM.from_pretrained({str(args.save)!r}); "
              "layerq-prune.json records the map)")
    return 0


def cmd_allocate(args: argparse.Namespace) -> int:
    from .adapt import finetune, lora_config, lora_rank_pattern, rank_costs
    from .influence import layer_influence
    from .scoring import score

    early = {}

    def check_budget(model):        # before any scoring: the minimum budget depends on the shapes alone
        budget = args.budget if args.budget is not None else int(args.rank * rank_costs(model).sum())
        try:
            early.update(budget=budget, uniform=lora_rank_pattern(model, "uniform", budget))
        except ValueError:
            one = int(rank_costs(model).sum())      # what --rank 1 spends: rank 1 in every layer
            if args.budget is None or args.budget >= one:       # not the budget's fault: the message as it is
                raise
            raise ValueError(f"--budget {args.budget:,} is below the minimum {one:,} LoRA parameters for "
                             f"{args.model} (rank 1 in every layer): give --budget {one} or more, or leave out "
                             f"--budget and set --rank (the budget is then --rank x {one:,})") from None

    model, _, train, val = _model_train_validation(args, loaded=check_budget)
    budget = early["budget"]
    if args.scores == "zeta2":
        scores = score(model, train, curvature="kfac")
    elif args.scores == "layerif":
        scores = layer_influence(model, train, val).scores("positive")
    else:
        from .artefacts import load_scores
        scores = load_scores(args.scores, model)
    label = f"mdl-{args.scores}" if args.scores in ("zeta2", "layerif") else "mdl-file"
    allocations = {"uniform": early["uniform"],
                   label: lora_rank_pattern(model, scores, budget, beta=args.beta)}
    print(f"budget {budget:,} LoRA parameters over {len(scores)} layers (q: {scores.method} on {args.task})")
    for name, alloc in allocations.items():
        print(f"{name:>14}  {alloc.parameters:>10,}  ranks {' '.join(map(str, alloc.ranks))}")
    record = dict(model=args.model, task=args.task, budget=budget, beta=args.beta,
                  score_method=scores.method, uniform_ranks=allocations["uniform"].ranks.tolist(),
                  layers=list(scores.names))
    trained = None
    if args.train:
        from peft import get_peft_model
        for name, alloc in allocations.items():
            peft_model = get_peft_model(model, lora_config(alloc))
            res = finetune(peft_model, train, val, steps=args.steps, lr=args.lr, seed=args.seed)
            if args.save and name == label:       # the MDL adapter is the one kept
                trained = dict(val_loss_before=res.val_loss_before, val_loss_after=res.val_loss_after,
                               steps=args.steps, lr=args.lr, seed=args.seed)
                _save_allocation(args, allocations[label], record, trained, peft_model)
            model = peft_model.unload()
            print(f"{name:>14}  validation loss {res.val_loss_before:.4f} -> {res.val_loss_after:.4f} "
                  f"after {args.steps} steps ({res.seconds:.0f} s)")
    if args.save:
        if trained is None:
            _save_allocation(args, allocations[label], record, None, None)
        print(f"saved the {label} LoRA {'adapter' if trained else 'configuration'} to {args.save} "
              f"(peft: LoraConfig.from_pretrained({str(args.save)!r})"
              + (f", PeftModel.from_pretrained(model, {str(args.save)!r})" if trained else "") + ")")
    return 0


def _save_allocation(args, allocation, record, trained, peft_model):
    from .artefacts import save_adapter
    from .models import SHORT_NAMES
    base = SHORT_NAMES.get(args.model, args.model)
    save_adapter(allocation, args.save, {**record, "trained": trained}, base_model=base, peft_model=peft_model)


def _add_model_and_device(parser):
    from .device import DEVICES
    parser.add_argument("--model", default="smollm2-135m", help="short name, hub id or folder (default: %(default)s)")
    parser.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from .curvature import CURVATURES, DAMPING_MODES, FACTORED, FISHERS
    from .data import SPLITS, TASKS
    from .pruning import MAP_SPECS, PRUNE_METHODS
    from .scoring import GRANULARITIES
    from .scoring import METHODS as SCORE_METHODS
    tasks = f"{', '.join(TASKS)} or hf:<dataset>"
    parser = _Parser(
        prog="layerq", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Layer-wise capacity in small LLMs: score layers, allocate capacity, prune.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")

    demo = sub.add_parser("demo", parents=[debug], help="the whole pipeline on the default real model",
                          description="The pipeline on a real pretrained model: its facts, held-out perplexity "
                                      "per task, zeta^2 per layer for two tasks, program A's LoRA ranks (with its "
                                      "KKT residual and the gap to cvxpy), program B's sparsity map applied with "
                                      "Wanda (weights restored), and where to go next.")
    _add_model_and_device(demo)
    demo.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks to evaluate")
    demo.add_argument("--score-tasks", nargs=2, default=["prose", "arithmetic"], metavar=("PRUNE_TASK", "LORA_TASK"),
                      help="the two tasks to score; the first calibrates the pruning, the second the LoRA ranks "
                           "(default: %(default)s)")
    demo.add_argument("--blocks", type=int, default=2, help="test blocks per task (default: %(default)s)")
    demo.add_argument("--score-blocks", type=int, default=1,
                      help="training blocks to score (and calibrate Wanda) on (default: %(default)s)")
    demo.add_argument("--block-size", type=int, default=128, help="tokens per block (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=4, help="blocks per forward pass (default: %(default)s)")
    demo.add_argument("--curvature", default="diag", choices=FACTORED,
                      help="curvature of zeta^2 (default: %(default)s, the fastest; kfac as in the paper)")
    demo.add_argument("--rank", type=int, default=2, help="LoRA budget = this uniform rank's parameters (default: %(default)s)")
    demo.add_argument("--beta", type=float, default=1.0, help="program A's beta (default: %(default)s)")
    demo.add_argument("--sparsity", type=float, default=0.6, help="global sparsity of program B (default: %(default)s)")
    demo.add_argument("--band", type=float, default=0.1, help="the MDL map keeps s_k within S -/+ band (default: %(default)s)")
    demo.add_argument("--question", default=None, help="also generate an answer to this question")
    demo.add_argument("--json", action="store_true", help="print the same content as JSON (progress stays on stderr)")
    demo.set_defaults(func=cmd_demo, check=_check_demo)

    sc = sub.add_parser("score", parents=[debug], help="layer scores zeta^2 (or grad-norm) on a task; torchrun-ready",
                        description="Score every layer of a model on a task. Under torchrun "
                                    "(torchrun --nproc_per_node=2 -m layerq_nb.cli score ...) the blocks are "
                                    "sharded across processes and the statistics summed.")
    _add_model_and_device(sc)
    sc.add_argument("--task", default="prose", help=f"{tasks} (default: %(default)s)")
    sc.add_argument("--split", default="train", choices=SPLITS, help="(default: %(default)s)")
    sc.add_argument("--blocks", type=int, default=8, help="blocks to score on (default: %(default)s)")
    sc.add_argument("--block-size", type=int, default=256, help="tokens per block (default: %(default)s)")
    sc.add_argument("--method", default="zeta2", choices=SCORE_METHODS)
    sc.add_argument("--curvature", default="kfac", choices=CURVATURES)
    sc.add_argument("--damping", type=float, default=0.1, help="damping level > 0 (default: %(default)s)")
    sc.add_argument("--damping-mode", default="relative", choices=DAMPING_MODES)
    sc.add_argument("--fisher", default="sampled", choices=FISHERS)
    sc.add_argument("--granularity", default="block", choices=GRANULARITIES)
    sc.add_argument("--batch-size", type=int, default=1,
                    help="blocks per pass (default: %(default)s, as scoring.BATCH_SIZE: no slower on CPU and "
                         "under 4 GiB for SmolLM2 EK-FAC; raise it on a GPU)")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--out", default=None, help="write the LayerScores as JSON here")
    sc.set_defaults(func=cmd_score, check=_check_score)

    pr = sub.add_parser("prune", parents=[debug], help="prune with a per-layer sparsity map and report perplexity",
                        description="Prune every linear map of every decoder layer with a per-layer sparsity "
                                    "map, report the zeros per layer and the held-out perplexity, restore the model.")
    _add_model_and_device(pr)
    pr.add_argument("--task", default="prose", help=f"calibration and evaluation task: {tasks} (default: %(default)s)")
    pr.add_argument("--sparsity", type=float, default=0.5, help="global fraction of zeros (default: %(default)s)")
    pr.add_argument("--map", default="mdl-zeta2", help=f"{', '.join(MAP_SPECS)}, or any of them + '-reverse' "
                                                        "(default: %(default)s)")
    pr.add_argument("--method", default="wanda", choices=PRUNE_METHODS)
    pr.add_argument("--band", type=float, default=0.1, help="MDL maps keep s_k within S -/+ band (default: %(default)s)")
    pr.add_argument("--blocks", type=int, default=8, help="calibration blocks (default: %(default)s)")
    pr.add_argument("--eval-blocks", type=int, default=16, help="test blocks for perplexity (default: %(default)s)")
    pr.add_argument("--block-size", type=int, default=256, help="tokens per block (default: %(default)s)")
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--scores", default=None, metavar="FILE",
                    help="layer scores from `layerq score --out FILE` for the mdl-*/layerif maps (no rescoring)")
    pr.add_argument("--out", default=None, help="write the result as JSON here")
    pr.add_argument("--save", default=None, metavar="DIR",
                    help="write the pruned model here (safetensors, config, tokenizer + layerq-prune.json)")
    pr.set_defaults(func=cmd_prune, check=_check_prune)

    al = sub.add_parser("allocate", parents=[debug], help="LoRA ranks per layer from layer scores (MDL program A)",
                        description="Allocate LoRA ranks per layer at a parameter budget from zeta^2 or LayerIF "
                                    "scores; with --train, fine-tune uniform and MDL ranks briefly and compare.")
    _add_model_and_device(al)
    al.add_argument("--task", default="arithmetic", help=f"task to score and train on: {tasks} (default: %(default)s)")
    al.add_argument("--scores", default="zeta2", metavar="zeta2|layerif|FILE",
                    help="score with zeta^2 (K-FAC) or LayerIF, or read a file from `layerq score --out` "
                         "(default: %(default)s)")
    al.add_argument("--save", default=None, metavar="DIR",
                    help="write the MDL allocation as a peft adapter_config.json here (with --train, the "
                         "trained adapter too)")
    al.add_argument("--rank", type=int, default=2, help="budget = this uniform rank's parameters (default: %(default)s)")
    al.add_argument("--budget", type=int, default=None, help="LoRA parameter budget > 0 (overrides --rank); "
                                                              "ranks are capped at min(d_in, d_out)")
    al.add_argument("--beta", type=float, default=1.0, help="program A's beta (default: %(default)s)")
    al.add_argument("--blocks", type=int, default=8, help="training blocks (default: %(default)s)")
    al.add_argument("--block-size", type=int, default=128, help="tokens per block (default: %(default)s)")
    al.add_argument("--train", action="store_true", help="fine-tune both allocations and compare")
    al.add_argument("--steps", type=int, default=20)
    al.add_argument("--lr", type=float, default=1e-3)
    al.add_argument("--seed", type=int, default=0)
    al.set_defaults(func=cmd_allocate, check=_check_allocate)

    doctor = sub.add_parser("doctor", parents=[debug], help="versions, device and where the model weights come from",
                            description="Versions of the stack, the device, and each cached model checked against "
                                        "the CRC-32s recorded when it was written (reads the weights once: about a "
                                        "second per GB).")
    doctor.add_argument("--quick", action="store_true",
                        help="compare the cached files' sizes only, not their CRC-32s (misses flipped bits)")
    doctor.set_defaults(func=cmd_doctor)

    lab = sub.add_parser("lab", parents=[debug], help="start JupyterLab on the tutorials (copies them first when installed from a wheel)",
                         description="Other options (e.g. --no-browser, --port 9999) are passed on to jupyter lab.")
    lab.add_argument("--dir", default="layerq_tutorials", help="JupyterLab's root for wheel installs; "
                     "the tutorials are copied into its layerq-tutorials/, where the launcher opens them")
    lab.add_argument("--dry-run", action="store_true", help="print the command instead of starting JupyterLab")
    lab.set_defaults(func=cmd_lab)

    from .course.cli import register as register_course  # argparse only: no torch, no nbgrader here
    course = register_course(sub, parents=[debug])
    course.set_defaults(check=_check_course)      # the subcommands set func only, so this check reaches them
    return parser


def _output_option(err: OSError, args) -> str:
    """The option (--out, --save, OUT) whose path `err` is about, as the user gave it."""
    given = [("--save", getattr(args, "save", None)),
             ("OUT" if getattr(args, "command", None) == "course" and args.course_command != "grade" else "--out",
              getattr(args, "out", None))]
    given = [(option, Path(value).expanduser().absolute()) for option, value in given if value]
    failed = [Path(name).absolute() for name in (err.filename, err.filename2) if name]
    for option, path in given:      # the one the failing path is in (or beside, for a temporary sibling)
        if any(f == path or path in f.parents or f.parent == path.parent for f in failed):
            return option
    return given[0][0] if len(given) == 1 else "output path"


def _one_line(err: BaseException, args=None) -> str:
    """The message of an anticipated failure, on one line, with the fix where there is a usual one."""
    import torch
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return f"out of memory ({text}): lower --batch-size or --blocks, or use a smaller --model"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on the device ({text}): free some space or choose another {_output_option(err, args)}"
    if isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)):
        return f"{text}: choose another {_output_option(err, args)} (or fix the permissions)"
    return text


ANTICIPATED = (ValueError, OSError, ImportError, MemoryError)     # bad input, files, cache, environment


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) != "lab":      # only `layerq lab` passes options on
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.jupyter_args = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False) or os.environ.get("LAYERQ_DEBUG", "") not in ("", "0")
    try:
        if getattr(args, "check", None):
            args.check(args)           # every argument and path, before a model loads
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"layerq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        import torch
        if isinstance(err, (*ANTICIPATED, torch.OutOfMemoryError)):
            print(f"layerq {args.command}: error: {_one_line(err, args)}", file=sys.stderr)
            return 2
        print(f"layerq {args.command}: unexpected error: {type(err).__name__}: {_one_line(err, args)} "
              "(run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
