"""The buttons behind `ex.hint` and `ex.solution`: drawing only. `layerq_nb.exercises.reveal` decides
what may be revealed (and prints text where no widgets can be drawn); these functions draw it."""
from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as widgets

__all__ = ["hint_box", "solution_box", "absent_solution"]


def hint_box(key: str, hints: Sequence[str]) -> widgets.VBox:
    """A button that reveals one more of exercise `key`'s hints per press (`box.reveal()` presses it)."""
    shown = widgets.HTML()
    button = widgets.Button(description=f"Hint {key} (1 of {len(hints)})", icon="lightbulb-o",
                            layout=widgets.Layout(width="auto"))
    count = [0]

    def reveal(_=None):
        if count[0] < len(hints):
            count[0] += 1
            shown.value = "".join(f"<p><b>Hint {i + 1}.</b> {html.escape(h)}</p>"
                                  for i, h in enumerate(hints[:count[0]]))
        if count[0] >= len(hints):
            button.disabled, button.description = True, f"all {len(hints)} hints shown"
        else:
            button.description = f"Hint {key} ({count[0] + 1} of {len(hints)})"
    button.on_click(reveal)
    box = widgets.VBox([button, shown])
    box.add_class("lq-hint")
    box.reveal = reveal
    return box


def solution_box(key: str, code: str) -> widgets.VBox:
    """A button that reveals exercise `key`'s worked solution once pressed (`box.reveal()` presses it)."""
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


def absent_solution(key: str) -> widgets.Button:
    """The disabled button an edition without solutions shows in their place."""
    button = widgets.Button(description=f"No solution in this edition ({key}): ask your instructor",
                            icon="ban", disabled=True, layout=widgets.Layout(width="auto"))
    button.add_class("lq-solution-absent")
    return button
