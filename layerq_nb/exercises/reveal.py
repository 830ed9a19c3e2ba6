"""Hints and solutions behind buttons: nothing is shown until the learner asks for it.

In a notebook with ipywidgets a button reveals one hint per press, and another reveals the solution.
Without ipywidgets (a bare install, plain Python) the same calls print how to ask in text instead.
"""
from __future__ import annotations

import html

__all__ = ["hint", "solution", "show_hint_button"]


def _widgets():
    try:
        import ipywidgets
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return ipywidgets if shell is not None and getattr(shell, "kernel", None) is not None else None


def hint(key: str, step: int | None = None):
    """Exercise `key`'s hints: `hint(key)` is a button revealing one more per press; `hint(key, 2)` returns
    the second hint as text (counting from 1)."""
    from ._core import get
    ex = get(key)
    if step is not None:
        if not 1 <= step <= len(ex.hints):
            raise IndexError(f"exercise {key} has {len(ex.hints)} hint(s); ask for 1 to {len(ex.hints)}")
        return ex.hints[step - 1]
    widgets = _widgets()
    if widgets is None:
        return f"exercise {key} has {len(ex.hints)} hint(s): ex.hint({key!r}, 1) .. ex.hint({key!r}, {len(ex.hints)})"
    shown = widgets.HTML()
    button = widgets.Button(description=f"Hint {key} (1 of {len(ex.hints)})", icon="lightbulb-o",
                            layout=widgets.Layout(width="auto"))
    count = [0]

    def reveal(_=None):
        if count[0] < len(ex.hints):
            count[0] += 1
            shown.value = "".join(f"<p><b>Hint {i + 1}.</b> {html.escape(h)}</p>" for i, h in enumerate(ex.hints[:count[0]]))
        if count[0] >= len(ex.hints):
            button.disabled, button.description = True, f"all {len(ex.hints)} hints shown"
        else:
            button.description = f"Hint {key} ({count[0] + 1} of {len(ex.hints)})"
    button.on_click(reveal)
    box = widgets.VBox([button, shown])
    box.add_class("lq-hint")
    box.reveal = reveal
    return box


def show_hint_button(ex) -> None:
    """Display the hint button under a check's verdict (in a notebook only)."""
    widgets = _widgets()
    if widgets is None:
        print(f"       Hints on request: ex.hint({ex.key!r}, 1)")
        return
    from IPython.display import display
    display(hint(ex.key))


def solution(key: str):
    """A button that reveals exercise `key`'s worked solution (try the hints first). In an edition without
    solutions (the student edition of `layerq course build`) it says so plainly instead of failing."""
    from . import NoSolutions, solution_code
    from ._core import get
    get(key)                                  # an unknown key is still an error, in every edition
    widgets = _widgets()
    try:
        code = solution_code(key)
    except NoSolutions as why:
        if widgets is None:
            return f"exercise {key}: {why}"
        button = widgets.Button(description=f"No solution in this edition ({key}): ask your instructor",
                                icon="ban", disabled=True, layout=widgets.Layout(width="auto"))
        button.add_class("lq-solution-absent")
        return button
    if widgets is None:
        return code
    shown = widgets.HTML()
    button = widgets.Button(description=f"Show solution {key}", icon="eye", layout=widgets.Layout(width="auto"))

    def reveal(_=None):
        shown.value = f"<pre>{html.escape(code)}</pre>"
        button.disabled = True
    button.on_click(reveal)
    box = widgets.VBox([button, shown])
    box.add_class("lq-solution")
    box.reveal = reveal
    return box
