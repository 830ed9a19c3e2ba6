"""The machinery behind the tutorials' exercises: checks on hidden instances, hints and solutions behind
buttons, and the modes a notebook can run its exercises in.

An exercise is a key ("04.1"), the names the learner defines (`answer`), hints, points and a *checker*.
The checker receives the learner's answer (a function or a value) and the notebook's context; it runs
the learner's function on instances the learner never sees (a fixed private seed, several sizes, the
degenerate cases) against the package's own implementation, and raises `Mismatch` with the first
disagreement: which instance, expected against got, shapes, a flipped sign, a constant factor. It
returns a one-line message of what the passing answer means.

`check(key, answer, **context)` never raises on a wrong or missing answer in a learner's notebook, so
an unanswered notebook runs top to bottom. Two other modes serve CI and teachers
(`LAYERQ_EXERCISES`, read at each check):

- ``learn`` (default): report, never raise;
- ``solve`` (also ``LAYERQ_SOLVE=1``): run the shipped solution in the notebook's own namespace (the
  names it defines stay defined for later cells), then check it; a failure raises. A solution that needs
  a name its notebook does not define fails here, where it lives;
- ``blank``: every check must find its exercise unanswered (the committed notebook ships no answers and
  no check raises on a blank); anything else raises.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Exercise", "Verdict", "Mismatch", "MissingContext", "NotAnswered", "ReturnedNone", "exercise", "check",
           "call", "close", "equal", "one_number", "whole_number", "parameters_kept", "instance_rng", "mode", "passed", "progress",
           "REGISTRY", "RESULTS", "CHECK_ERRORS"]

MODES = ("learn", "solve", "blank")
POINTS = {"build": 3, "number": 1}       # building a stage weighs more than reading off a number


class Mismatch(Exception):
    """A wrong answer; the message says on which hidden instance and how it differs."""


class MissingContext(TypeError):
    """A check called without the context its exercise needs (the model, a result): the notebook's call
    was edited. Raised, never turned into a verdict; the message shows the call."""


class NotAnswered(Exception):
    """The learner has not written this yet (None, `...`, NotImplementedError, or a function returning None)."""


@dataclass(frozen=True)
class Exercise:
    key: str                                  # "NN.i": notebook NN, exercise i
    title: str
    answer: tuple[str, ...]                   # names the learner defines, passed to the checker in order
    checker: Callable[..., str]
    kind: str = "build"                       # "build": the learner writes a stage; "number": reads one off
    points: int = 3
    hints: tuple[str, ...] = ()

    @property
    def notebook(self) -> str:
        return self.key.split(".")[0]


@dataclass(frozen=True)
class Verdict:
    """What a check found. True only when passed; shown in a notebook as one word."""
    key: str
    status: str                               # "passed" | "wrong" | "unanswered"
    message: str = ""
    points: int = 0
    max_points: int = 0

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        return {"passed": "passed", "wrong": "not yet", "unanswered": "not answered"}[self.status]


REGISTRY: dict[str, Exercise] = {}
RESULTS: dict[str, Verdict] = {}              # the latest verdict per exercise in this kernel
CHECK_ERRORS: list[str] = []                  # checker errors shown as a verdict in learn mode (tests assert none)


def exercise(key: str, *, title: str, answer: str | tuple[str, ...], kind: str = "build",
             points: int | None = None, hints: tuple[str, ...] | list[str] = ()):
    """Register the decorated checker as exercise `key`."""
    if kind not in POINTS:
        raise ValueError(f"kind must be one of {tuple(POINTS)}, got {kind!r}")

    def register(checker: Callable[..., str]) -> Callable[..., str]:
        if key in REGISTRY:
            raise ValueError(f"exercise {key} is defined twice")
        names = (answer,) if isinstance(answer, str) else tuple(answer)
        REGISTRY[key] = Exercise(key, title, names, checker, kind,
                                 POINTS[kind] if points is None else int(points), tuple(hints))
        return checker
    return register


def mode() -> str:
    """The exercise mode from the environment: learn (default), solve or blank."""
    if os.environ.get("LAYERQ_SOLVE", "0") == "1":
        return "solve"
    value = os.environ.get("LAYERQ_EXERCISES", "learn").strip().lower() or "learn"
    if value not in MODES:
        raise ValueError(f"LAYERQ_EXERCISES={value!r}: use one of {', '.join(MODES)}")
    return value


# ----------------------------------------------------------------------------- helpers for checkers

def instance_rng(key: str, index: int) -> np.random.Generator:
    """A generator for hidden instance `index` of exercise `key`: fixed, but not one the learner sees."""
    digits = [int(c) for c in key if c.isdigit()]
    return np.random.default_rng([20251, *digits, index])


def _blank(value) -> bool:
    return value is None or value is Ellipsis


class ReturnedNone(Mismatch):
    """The learner's function returned None on an instance after returning results on earlier ones."""


# whether the learner's function has returned a result yet in the check that is running (`check` resets it)
_RETURNED = {"any": False}


def _fingerprint(value):
    """A digest of an array or tensor argument (or of a dict, list or tuple of them), to see afterwards
    whether the learner's function changed it; None for anything else. A digest, not a copy: the real
    model's gradients passed to a check weigh hundreds of MB."""
    if isinstance(value, dict):
        parts = {k: _fingerprint(v) for k, v in value.items()}
        return ("dict", tuple(parts.items())) if any(p is not None for p in parts.values()) else None
    if isinstance(value, (list, tuple)):
        parts = tuple(_fingerprint(v) for v in value)
        return ("seq", parts) if any(p is not None for p in parts) else None
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:            # no fixed bytes to digest
            return None
        data = np.ascontiguousarray(value).reshape(-1)
        return (value.shape, data.dtype.str, hashlib.blake2b(data.view(np.uint8)).hexdigest())
    if hasattr(value, "detach") and hasattr(value, "untyped_storage"):       # a torch tensor
        import torch
        data = value.detach().cpu().contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy() if data.numel() else np.zeros(0, np.uint8)
        return (tuple(data.shape), str(data.dtype), hashlib.blake2b(raw).hexdigest())
    return None


def _argument_names(fn, args, kwargs) -> list[str]:
    """The learner's parameter name for each argument passed (for messages), "argument i" where the
    signature cannot say."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        by_id = {id(v): name for name, v in bound.arguments.items()}
    except (TypeError, ValueError):
        by_id = {}
    return [by_id.get(id(v), f"argument {i + 1}") for i, v in enumerate([*args, *kwargs.values()])]


def call(fn, *args, where: str = "", **kwargs):
    """Run the learner's function. NotImplementedError, or a None return before any result, means "not
    answered"; None after results on earlier instances, any other exception, or an array argument changed
    in place becomes a Mismatch that names the instance (a learner's bug is feedback, not a crash). The
    in-place check matters beyond the check: the notebook then calls the same function on its own data
    (the model's weights, the scores), which must come back untouched."""
    if not callable(fn):
        raise Mismatch(f"expected a function, got {type(fn).__name__}")
    values = [*args, *kwargs.values()]
    before = [_fingerprint(v) for v in values]
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAnswered("your function still raises NotImplementedError: write its body") from None
    except (Mismatch, NotAnswered):
        raise
    except Exception as error:
        raise Mismatch(f"{where}: your function raised {type(error).__name__}: {error}".lstrip(": ")) from None
    if out is None:
        if _RETURNED["any"]:
            raise ReturnedNone(f"{where}: your function returned None here, after results on the earlier instances: "
                               "does a path through it end without `return` (a loop that can run out, a branch "
                               "without one)?".lstrip(": "))
        raise NotAnswered("your function returned None: write its body and return the result (is a `return` missing?)")
    _RETURNED["any"] = True
    changed = [name for name, b, v in zip(_argument_names(fn, args, kwargs), before, values)
               if b is not None and b != _fingerprint(v)]
    if changed:
        raise Mismatch(f"{where}: your function changed its input {', '.join(f'`{n}`' for n in changed)} in place; "
                       "the notebook passes its own data (the model's weights, the scores), which must come back "
                       "untouched: work on a copy (x.clone() for a tensor, x.copy() or x / y, not x /= y, for "
                       "an array)".lstrip(": "))
    return out


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):                 # a torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x)


def one_number(value, *, where: str = "", what: str = "result") -> float:
    """A learner's number as a float: a Python or numpy scalar, or a 0-d array or tensor. A 1-element array
    is refused, not unwrapped: the notebook's later cells format the answer (f"{x:.3f}") and stack it with
    others, which a shape-(1,) value breaks."""
    prefix = f"{where}: " if where else ""
    try:
        if value is None or isinstance(value, (str, bytes, bool)):
            raise TypeError
        array = _numpy(value).astype(float)
    except (TypeError, ValueError, RuntimeError):
        raise Mismatch(f"{prefix}your {what} is a {type(value).__name__}, not a number") from None
    if array.ndim != 0:
        fix = " (take it out with .item() or float(...))" if array.size == 1 else ""
        raise Mismatch(f"{prefix}your {what} should be one number (a float or a 0-d tensor), got an array of shape "
                       f"{array.shape}{fix}")
    return float(array)


def whole_number(value) -> int | None:
    """A learner's count or index as an int (an int, a numpy integer, or a float like 30.0); None for
    anything else: a string or a bool (which int() would read), 2.7 (which int() would truncate), inf."""
    if isinstance(value, (str, bytes, bool)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


def _describe(a: np.ndarray) -> str:
    if a.size <= 6:
        return np.array2string(a, precision=5, separator=", ")
    flat = a.ravel()
    return f"[{', '.join(f'{v:.5g}' for v in flat[:3])}, ...] (shape {a.shape})"


def _low_precision(x) -> bool:
    """Whether a learner's result is a float32 / float16 / bfloat16 array or tensor."""
    return str(getattr(x, "dtype", "")).replace("torch.", "") in ("float32", "float16", "bfloat16")


def close(got, expected, *, where: str = "", rtol: float = 1e-6, atol: float = 1e-9, what: str = "result") -> None:
    """Raise a Mismatch unless `got` equals `expected` to the tolerance; say how they differ."""
    prefix = f"{where}: " if where else ""
    narrow = _low_precision(got)
    try:
        g = _numpy(got).astype(float)
    except (TypeError, ValueError):
        raise Mismatch(f"{prefix}your {what} is a {type(got).__name__}, not numbers") from None
    e = _numpy(expected).astype(float)
    if g.shape != e.shape:
        if g.size == e.size and g.ndim == 2 and g.shape == e.shape[::-1]:
            raise Mismatch(f"{prefix}expected shape {e.shape}, got {g.shape}: transposed?")
        raise Mismatch(f"{prefix}expected {what} of shape {e.shape}, got shape {g.shape}")
    if not np.all(np.isfinite(g[np.isfinite(e)])):
        raise Mismatch(f"{prefix}your {what} has non-finite values (nan or inf) where the expected one is finite")
    if np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True):
        return
    error = np.abs(g - e)
    worst = np.unravel_index(int(np.nanargmax(error)), e.shape) if e.ndim else ()
    detail = f"expected {_describe(e)}, got {_describe(g)}; largest error {float(error[worst]):.3g}"
    if e.ndim:
        detail += f" at index {tuple(int(i) for i in worst)}"
    if np.allclose(g, -e, rtol=rtol, atol=atol) and np.any(e != 0):
        detail += ". The sign is flipped"
    elif narrow and np.allclose(g, e, rtol=1e-4, atol=max(atol, 1e-6 * float(np.abs(e).max(initial=0.0)))):
        detail += (f". Your {what} is in {str(got.dtype).replace('torch.', '')} and agrees only to its precision: "
                   "compute in float64")
    elif not np.any(g) and np.any(e):
        detail += f". Your {what} is all zeros"
    else:
        nonzero = np.abs(e) > atol
        if nonzero.sum() >= 2:
            ratio = g[nonzero] / e[nonzero]
            if np.allclose(ratio, ratio.flat[0], rtol=1e-6) and not np.isclose(ratio.flat[0], 1.0):
                detail += f". Off by a constant factor {ratio.flat[0]:.4g}"
    raise Mismatch(prefix + detail)


def equal(got, expected, *, where: str = "", what: str = "result") -> None:
    """Raise a Mismatch unless `got` equals `expected` exactly (integers, booleans, masks)."""
    prefix = f"{where}: " if where else ""
    g, e = _numpy(got), _numpy(expected)
    if g.shape != e.shape:
        raise Mismatch(f"{prefix}expected {what} of shape {e.shape}, got shape {g.shape}")
    if e.dtype == bool and g.dtype != bool:
        raise Mismatch(f"{prefix}expected a boolean {what}, got dtype {g.dtype}")
    wrong = g != e
    if np.any(wrong):
        where_wrong = np.argwhere(wrong)
        first = tuple(int(i) for i in where_wrong[0]) if e.ndim else ()
        raise Mismatch(f"{prefix}{int(wrong.sum())} of {e.size} entries differ; the first at index {first}: "
                       f"expected {e[first]!r}, got {g[first]!r}")


# ----------------------------------------------------------------------------- checking

def get(key: str) -> Exercise:
    """The exercise `key`, importing its notebook's module on first use."""
    from . import load_notebook
    key = str(key)
    if key not in REGISTRY:
        load_notebook(key.split(".")[0])
    if key not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise KeyError(f"no exercise {key!r}; exercises of this notebook: {known}")
    return REGISTRY[key]


def _namespace() -> dict:
    """The notebook's namespace (IPython's user namespace), else the calling module's globals."""
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        return shell.user_ns
    frame = sys._getframe(2)
    return frame.f_globals


def run_solution(key: str, namespace: dict) -> tuple:
    """Execute exercise `key`'s shipped solution in `namespace`; return the answer names' values."""
    from . import solution_code
    ex = get(key)
    code = solution_code(key)
    exec(compile(code, f"<solution {key}>", "exec"), namespace)
    missing = [name for name in ex.answer if name not in namespace]
    if missing:
        raise AssertionError(f"the solution of {key} does not define {', '.join(missing)}")
    return tuple(namespace[name] for name in ex.answer)


@contextlib.contextmanager
def parameters_kept(*models):
    """Every parameter's requires_grad flag and .grad put back as they were, for the models given (None
    skipped): a check hands the notebook's model to the learner's function, which may freeze parameters
    for speed or leave gradients behind, and the notebook's later cells (and checks) need it unchanged."""
    saved = [(p, p.requires_grad, p.grad) for model in models if model is not None for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


@contextlib.contextmanager
def _random_state_kept():
    """numpy's and torch's global random state (CPU, CUDA once initialised, MPS) restored after a check:
    building hidden instances (an nn.Linear's default init) or the learner's own draws inside the check
    must not change what the notebook's next random draw gives."""
    state = np.random.get_state()
    torch = sys.modules.get("torch")
    mps = None
    if torch is not None and torch.backends.mps.is_available():
        mps = torch.mps.get_rng_state()
    try:
        if torch is None:
            yield
        else:
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            devices = list(range(torch.cuda.device_count())) if cuda else []
            with torch.random.fork_rng(devices=devices):
                yield
    finally:
        np.random.set_state(state)
        if mps is not None:
            torch.mps.set_rng_state(mps)


def check(key: str, *answer, **context) -> Verdict:
    """Check the learner's `answer` to exercise `key` (the names it asks for, in order) on its hidden
    instances; `context` passes what the checker needs from the notebook (the model, a result).

    The check keeps numpy's and torch's global random state. A call without the context the checker
    needs raises `MissingContext`. In learn mode an error of the checker itself (an answer of a shape it
    did not foresee) becomes a "wrong" verdict that says the check could not finish, and is recorded in
    CHECK_ERRORS; solve and blank mode raise it."""
    ex = get(key)
    current = mode()
    if current == "solve":
        answer = run_solution(key, _namespace())
    if len(answer) != len(ex.answer):
        raise TypeError(f"ex.check({key!r}, ...) takes {len(ex.answer)} answer(s): {', '.join(ex.answer)}")
    blank = any(_blank(a) for a in answer)
    if not blank:      # a blank answer is "not answered" whatever the call passes
        try:
            inspect.signature(ex.checker).bind(*answer, **context)
        except TypeError as error:
            raise MissingContext(f"ex.check({key!r}, ...): {error}; the notebook's own call shows what to pass") from None
    _RETURNED["any"] = False
    try:
        if blank:
            name, value = next((n, a) for n, a in zip(ex.answer, answer) if _blank(a))
            raise NotAnswered(f"{name} is still {value!r}: set it to your answer and run this cell again")
        with _random_state_kept():
            message = ex.checker(*answer, **context)
        verdict = Verdict(key, "passed", message or "", ex.points, ex.points)
    except NotAnswered as why:
        verdict = Verdict(key, "unanswered", str(why), 0, ex.points)
    except Mismatch as why:
        verdict = Verdict(key, "wrong", str(why), 0, ex.points)
    except (MissingContext, MemoryError):
        raise
    except Exception as error:   # noqa: BLE001 - a learner's notebook gets a verdict, not a traceback
        if current != "learn" or type(error).__name__ == "OutOfMemoryError":
            raise
        CHECK_ERRORS.append(f"{key}: {type(error).__name__}: {error}")
        verdict = Verdict(key, "wrong", f"the check could not finish ({type(error).__name__}: {str(error)[:300]}). "
                          "Most often the answer has another type or shape than the exercise asks for: compare what "
                          "your code returns with the exercise's text", 0, ex.points)
    finally:
        _RETURNED["any"] = False
    RESULTS[key] = verdict
    _show(ex, verdict)
    if current == "solve" and not verdict:
        raise AssertionError(f"exercise {key}: the shipped solution fails its check: {verdict.message}")
    if current == "blank" and verdict.status != "unanswered":
        raise AssertionError(f"exercise {key}: a blank notebook should leave it unanswered, but the check found "
                             f"{verdict.status}: {verdict.message}")
    return verdict


def _show(ex: Exercise, verdict: Verdict) -> None:
    """Print the verdict (kept in executed notebooks); on anything but a pass offer the hints behind a button."""
    head = f"[{ex.key}] "
    if verdict.status == "passed":
        print(f"{head}Correct ({verdict.points}/{verdict.max_points} points). {verdict.message}".rstrip())
        return
    if verdict.status == "unanswered":
        print(f"{head}Not answered yet. {verdict.message}".rstrip())
    else:
        print(f"{head}Not yet. {verdict.message}")
    if ex.hints:
        from .reveal import show_hint_button
        show_hint_button(ex)


def passed(key: str) -> bool:
    """Whether exercise `key` passed in this kernel: later cells use the learner's code only then, and
    fall back to the package's own otherwise (so a notebook with blank exercises still runs)."""
    verdict = RESULTS.get(key)
    return verdict is not None and bool(verdict)


def progress(notebook: str | None = None) -> list[Verdict]:
    """The latest verdict of every exercise checked in this kernel (optionally of one notebook)."""
    rows = [v for k, v in sorted(RESULTS.items()) if notebook is None or k.startswith(f"{notebook}.")]
    got = sum(v.points for v in rows)
    total = sum(v.max_points for v in rows)
    for v in rows:
        print(f"{v.key:>6}  {v!r:<13} {v.points}/{v.max_points}")
    print(f"{'total':>6}  {got}/{total} points")
    return rows
