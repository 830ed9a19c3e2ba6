"""The course kit: student and instructor editions of the tutorials, grading with nbgrader, and a rendered
copy with outputs. `layerq course build|grade|render` (or `python -m layerq_nb.course`); the teacher's page
is notebooks/TEACHING.md.

- `build(out)`: the instructor edition (nbgrader source with solutions, points, notes) and the student
  edition (notebooks without solutions, and a wheel of layerq_nb without `exercises/solutions/`);
- `grade(submissions, course=..., out=...)`: points per student x exercise (``scores.csv``) and feedback;
- `render(out)`: the tutorials executed and written as HTML pages that open offline.

nbgrader and jupyter-server-mathjax come with the `course` extra; they are imported only when used.
"""
from __future__ import annotations

__all__ = ["build", "grade", "render"]


def __getattr__(name):
    # lazy: `import layerq_nb.course` stays cheap and works without the course extra installed
    modules = {"build": ".editions", "grade": ".grade", "render": ".render"}
    if name not in modules:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(modules[name], __name__), name)
