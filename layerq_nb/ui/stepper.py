"""A step-through panel: Prev / Next / Play over steps that each have a title, a short explanation and
a matplotlib figure drawn into an Output widget (so executed notebooks keep the figures as images).
"""
from __future__ import annotations

import html
import io
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
from IPython import get_ipython
from IPython.display import Image, clear_output, display
from matplotlib.figure import Figure

__all__ = ["Step", "Stepper", "new_figure", "figure_png"]


@dataclass(frozen=True)
class Step:
    title: str
    text: Callable[[], str] | str            # plain text, one paragraph per line; a callable is re-evaluated on every redraw
    draw: Callable[[Figure], None] | None = None


def new_figure(width: float = 7.0, height: float = 3.2) -> Figure:
    """A pyplot-free figure: nothing leaks into the notebook's global figure list."""
    return Figure(figsize=(width, height), layout="constrained")


def figure_png(figure: Figure) -> Image:
    """The figure as a PNG image (a bare Figure has no rich display without pyplot's inline backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return Image(data=buffer.getvalue(), format="png")


class Stepper(widgets.VBox):
    """Steps with Prev / Next / Play; `redraw()` repaints the current step (call it when a control moves).

    The last figure drawn is kept in `.figure`, so tests can check what a step shows without a browser.
    """

    def __init__(self, steps: list[Step], side=None, controls=(), interval_ms: int = 2500):
        self.steps = list(steps)
        n = len(self.steps)
        self.step = widgets.IntSlider(0, 0, n - 1, description="step", readout=True,
                                      layout=widgets.Layout(width="240px"))
        self.play = widgets.Play(value=0, min=0, max=n - 1, interval=interval_ms, description="play")
        widgets.link((self.play, "value"), (self.step, "value"))
        self.prev = widgets.Button(description="Prev", icon="arrow-left", layout=widgets.Layout(width="80px"))
        self.next = widgets.Button(description="Next", icon="arrow-right", layout=widgets.Layout(width="80px"))
        self.prev.on_click(lambda _: self.go(self.step.value - 1))
        self.next.on_click(lambda _: self.go(self.step.value + 1))
        self.title = widgets.HTML()
        self.text = widgets.HTML(layout=widgets.Layout(max_width="720px"))
        self.output = widgets.Output()
        self.figure: Figure | None = None
        self.error: Exception | None = None
        self.step.observe(lambda _: self.redraw(), names="value")
        bar = widgets.HBox([self.prev, self.next, self.play, self.step])
        body = [self.title, self.text, self.output]
        main = widgets.HBox([side, widgets.VBox(body)]) if side is not None else widgets.VBox(body)
        super().__init__([bar, *controls, main])
        self.add_class("lq-stepper")
        self.redraw()

    @property
    def current(self) -> Step:
        return self.steps[self.step.value]

    def go(self, index: int):
        self.step.value = max(0, min(len(self.steps) - 1, index))

    def redraw(self):
        """Repaint the current step. Errors are shown in the panel (observers' exceptions are otherwise lost)."""
        step = self.current
        self.title.value = f"<b>Step {self.step.value + 1} of {len(self.steps)}: {html.escape(step.title)}</b>"
        try:
            text = step.text() if callable(step.text) else step.text
            self.text.value = "".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n"))   # a line, a paragraph
            figure = None
            if step.draw is not None:
                figure = new_figure()
                step.draw(figure)
            self.figure, self.error = figure, None
        except Exception as error:       # show it where the student is looking
            self.error = error
            self.text.value = f"<p style='color:#b00'>{html.escape(type(error).__name__)}: {html.escape(str(error))}</p>"
            figure = None
        if get_ipython() is None:      # plain Python (tests): keep .figure, print nothing
            return
        with self.output:
            clear_output(wait=True)
            if figure is not None:
                display(figure_png(figure))
