"""Hints and solutions behind buttons: nothing is shown until the learner asks for it.

In a notebook with ipywidgets a button reveals one hint per press, and another reveals the solution;
the buttons are drawn by `layerq_nb.ui.reveal`, so this module never imports ipywidgets itself.
Without them (a bare install, plain Python) the same calls print how to ask in text instead.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core import Exercise

__all__ = ["hint", "solution", "show_hint_button"]


def _can_draw() -> bool:
    """True in a Jupyter kernel with ipywidgets installed (found without importing it)."""
    try:
        if importlib.util.find_spec("ipywidgets") is None:
            return False
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def hint(key: str, step: int | None = None) -> object:
    """Exercise `key`'s hints: `hint(key)` is a button revealing one more per press (text saying how to
    ask, outside a notebook); `hint(key, 2)` returns the second hint as text (counting from 1)."""
    from ._core import get
    ex = get(key)
    if step is not None:
        if not 1 <= step <= len(ex.hints):
            raise IndexError(f"exercise {key} has {len(ex.hints)} hint(s); ask for 1 to {len(ex.hints)}")
        return ex.hints[step - 1]
    if not _can_draw():
        return f"exercise {key} has {len(ex.hints)} hint(s): ex.hint({key!r}, 1) .. ex.hint({key!r}, {len(ex.hints)})"
    from ..ui.reveal import hint_box
    return hint_box(key, ex.hints)


def show_hint_button(ex: Exercise) -> None:
    """Display the hint button under a check's verdict (in a notebook only)."""
    if not _can_draw():
        print(f"       Hints on request: ex.hint({ex.key!r}, 1)")
        return
    from IPython.display import display
    display(hint(ex.key))


def solution(key: str) -> object:
    """A button that reveals exercise `key`'s worked solution (try the hints first; outside a notebook, the
    code as text). In an edition without solutions (the student edition of `layerq course build`) it
    says so plainly instead of failing."""
    from . import NoSolutions, solution_code
    from ._core import get
    get(key)                                  # an unknown key is still an error, in every edition
    draw = _can_draw()
    try:
        code = solution_code(key)
    except NoSolutions as why:
        if not draw:
            return f"exercise {key}: {why}"
        from ..ui.reveal import absent_solution
        return absent_solution(key)
    if not draw:
        return code
    from ..ui.reveal import solution_box
    return solution_box(key, code)
