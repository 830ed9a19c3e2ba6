"""nbgrader's markers in the tutorials: which cell holds the learner's answer to which exercise.

The tutorials are the single source of every edition. Each cell that ends in `ex.check("NN.i", ...)` is
an nbgrader *autograded answer* cell (metadata ``nbgrader.solution = true``, ``grade_id = "answer-NN-i"``);
`layerq course build` puts the shipped solution between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` in
it and adds the *autograder test* cell (``check-NN-i``, the exercise's points) after it. The marks are
metadata only, so the tutorials read and run exactly as before.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["CHECK", "answer_id", "check_id", "exercise_key", "exercise_of", "mark_notebook"]

CHECK = re.compile(r'^ex\.check\(\s*"(\d\d\.\d+)"', re.MULTILINE)
SCHEMA = 3                                     # nbgrader's cell-metadata schema version


def answer_id(key: str) -> str:
    """nbgrader's grade_id of exercise `key`'s answer cell: "06.2" -> "answer-06-2"."""
    return "answer-" + key.replace(".", "-")


def check_id(key: str) -> str:
    """nbgrader's grade_id of exercise `key`'s autograder test cell: "06.2" -> "check-06-2"."""
    return "check-" + key.replace(".", "-")


def exercise_key(grade_id: str) -> str:
    """The exercise key back from either grade_id: "check-06-2" -> "06.2"."""
    _, notebook, index = grade_id.rsplit("-", 2)
    return f"{notebook}.{index}"


def exercise_of(cell: dict) -> str | None:
    """The key of the exercise a code cell checks (its top-level `ex.check("NN.i", ...)`), else None."""
    if cell.get("cell_type") != "code":
        return None
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    keys = CHECK.findall(source)
    if len(keys) > 1:
        raise ValueError(f"one exercise per cell, found {keys}: split the cell")
    return keys[0] if keys else None


def answer_metadata(key: str) -> dict:
    return {"grade": False, "grade_id": answer_id(key), "locked": False, "schema_version": SCHEMA, "solution": True}


def mark_notebook(path: str | Path) -> list[str]:
    """Add (or refresh) the answer-cell markers of one tutorial in place, touching nothing but metadata;
    return the exercise keys marked. The file keeps the repository's format (JSON, indent 1, UTF-8)."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    keys = []
    for cell in nb["cells"]:
        key = exercise_of(cell)
        if key is None:
            cell.get("metadata", {}).pop("nbgrader", None)
            continue
        cell.setdefault("metadata", {})["nbgrader"] = answer_metadata(key)
        keys.append(key)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return keys


if __name__ == "__main__":          # python -m layerq_nb.course.markers notebooks/0*.ipynb
    import sys
    for name in sys.argv[1:]:
        print(name, ", ".join(mark_notebook(name)))
