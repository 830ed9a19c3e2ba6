"""The tutorials' exercises: `ex.check("04.1", allocation_at)` runs the learner's answer on hidden
instances against the package's own implementation and says what differs; `ex.hint("04.1")` and
`ex.solution("04.1")` reveal help behind buttons. One module per notebook (`nb00` .. `nb07`) holds its
checks; the worked solutions live apart, in `solutions/`, so a student edition can leave them out.

Modes (`LAYERQ_EXERCISES`): learn (default), solve (`LAYERQ_SOLVE=1`: run each shipped solution in the
notebook's own namespace, and fail if it does not pass), blank (every check must find no answer).
Without `solutions/` (a student edition) or with `LAYERQ_NO_SOLUTIONS=1` (set by the grader) `ex.solution`
says that this edition has no solutions.
"""
from __future__ import annotations

import importlib
import os

from ._core import (
    CHECK_ERRORS,
    REGISTRY,
    RESULTS,
    Exercise,
    Mismatch,
    MissingContext,
    NotAnswered,
    ReturnedNone,
    Verdict,
    call,
    check,
    close,
    equal,
    exercise,
    get,
    instance_rng,
    mode,
    one_number,
    passed,
    progress,
    run_solution,
    whole_number,
)
from .reveal import hint, solution

__all__ = ["check", "hint", "solution", "passed", "progress", "exercises", "solution_code", "Exercise", "Verdict",
           "Mismatch", "MissingContext", "NotAnswered", "ReturnedNone", "CHECK_ERRORS", "NoSolutions", "exercise", "call", "close", "equal", "instance_rng", "mode", "one_number", "whole_number",
           "REGISTRY", "RESULTS", "get", "run_solution"]

NOTEBOOKS = tuple(f"{i:02d}" for i in range(8))
NO_SOLUTIONS = ("this edition of layerq_nb ships no solutions: try the hints (ex.hint), then ask your "
                "instructor")


class NoSolutions(LookupError):
    """The worked solutions are absent: a student edition, or a grader that hides them (LAYERQ_NO_SOLUTIONS=1)."""


def load_notebook(notebook: str) -> None:
    """Import the checks of notebook `notebook` ("04") so its exercises are registered."""
    notebook = str(notebook).zfill(2)
    if notebook not in NOTEBOOKS:
        raise KeyError(f"no notebook {notebook!r}: choose one of {', '.join(NOTEBOOKS)}")
    try:
        importlib.import_module(f".nb{notebook}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.nb{notebook}":
            raise


def exercises(notebook: str | None = None) -> list[Exercise]:
    """Every registered exercise (optionally of one notebook), in order."""
    for nb in NOTEBOOKS if notebook is None else (str(notebook).zfill(2),):
        load_notebook(nb)
    return [REGISTRY[k] for k in sorted(REGISTRY, key=lambda k: tuple(int(p) for p in k.split(".")))
            if notebook is None or REGISTRY[k].notebook == str(notebook).zfill(2)]


def solution_code(key: str) -> str:
    """The worked solution of exercise `key` as code, from `solutions/nbNN.py`."""
    notebook = key.split(".")[0]
    if os.environ.get("LAYERQ_NO_SOLUTIONS", "0") == "1":    # set by `layerq course grade`
        raise NoSolutions(NO_SOLUTIONS)
    try:
        module = importlib.import_module(f".solutions.nb{notebook}", __name__)
    except ModuleNotFoundError as error:
        if error.name not in (f"{__name__}.solutions", f"{__name__}.solutions.nb{notebook}"):
            raise
        module = None
    table = getattr(module, "SOLUTIONS", {})
    if key in table:
        return table[key].strip("\n")
    if module is None:
        raise NoSolutions(NO_SOLUTIONS)
    raise KeyError(f"no solution for exercise {key!r}")
