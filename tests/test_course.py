"""The course kit end to end: `course build` writes the real editions of all eight tutorials with nbgrader,
the student edition (notebooks, wheel, an install of that wheel) holds no solution text, and `course grade`
scores real submissions of notebook 06 (the fastest tutorial, ~17 s in FAST mode: one number-only and two
build-it exercises, so both weights show) and contains a submission that raises, floods its output or
loops forever (a tiny two-exercise tutorial built the same way, so each costs a kernel start, not a run of
the real model)."""
from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from layerq_nb import exercises as ex
from layerq_nb.course import cli
from layerq_nb.course.markers import answer_id, check_id, exercise_of, mark_notebook
from layerq_nb.ui._assets import tutorials

MIN_CHARS = 12     # shorter solution lines are generic code ("else:", "return out") found anywhere


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


PACKAGE = Path(ex.__file__).resolve().parents[1]


def solution_lines() -> set[str]:
    """Every line of the shipped solutions (exercises/solutions/*.py) that the learner is not given anyway:
    not in the blank tutorials (a stub's `def` line is both) and not in the package's own code outside
    `solutions/` (the library they learn, and the reference implementations the checks compare against and
    the notebooks fall back on: `return list(range(rank, n_blocks, world_size))` is both 07.2's solution and
    the package's `shard`). Removing `solutions/` cannot hide those; this test is about the rest."""
    given = {line.strip() for path in tutorials().values() for cell in _cells(path)
             for line in _source(cell).split("\n")}
    library = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py") if "solutions" not in p.parts)
    lines = set()
    for nb in ex.NOTEBOOKS:
        for code in importlib.import_module(f"layerq_nb.exercises.solutions.nb{nb}").SOLUTIONS.values():
            lines |= {line.strip() for line in code.split("\n") if len(line.strip()) >= MIN_CHARS}
    return {line for line in lines - given if line not in library}


def leaks(files) -> dict[str, list[str]]:
    lines = solution_lines()
    out = {}
    for path in files:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".ipynb":       # compare the cells' text, not its JSON escaping
            text = "\n".join(_source(c) for c in _cells(path))
        found = [line for line in lines if line in text]
        if found:
            out[str(path)] = found
    return out


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from layerq_nb.course.editions import build
    return build(tmp_path_factory.mktemp("course"), wheel=True)


def test_tutorials_carry_nbgrader_markers_on_every_checked_cell(tmp_path):
    for key, path in tutorials().items():
        marked = {}
        for cell in _cells(path):
            meta = cell.get("metadata", {}).get("nbgrader")
            if exercise_of(cell) is not None:
                assert meta == {"grade": False, "grade_id": answer_id(exercise_of(cell)), "locked": False,
                                "schema_version": 3, "solution": True}, (path.name, exercise_of(cell))
                marked[exercise_of(cell)] = True
            else:
                assert meta is None, (path.name, _source(cell)[:80])
        assert sorted(marked) == [e.key for e in ex.exercises(key)]
        copy = tmp_path / path.name                       # the marking script is idempotent
        copy.write_bytes(path.read_bytes())
        mark_notebook(copy)
        assert copy.read_bytes() == path.read_bytes()


def test_build_writes_both_editions_from_the_tutorials(course):
    assert course.assignments == tuple(p.stem for p in tutorials().values())
    for assignment, points in course.points.items():
        assert points == {e.key: {"build": 3, "number": 1}[e.kind] for e in ex.exercises(assignment[:2])}
    for path in tutorials().values():
        student = course.student / "notebooks" / path.name
        source = course.instructor / "source" / path.stem / path.name
        tutorial = [_source(c) for c in _cells(path)]
        released = _cells(student)
        checks = [c for c in released if c["metadata"].get("nbgrader", {}).get("grade")]
        # the student edition is the tutorial plus one locked autograder cell per exercise, the answer cells
        # exactly as the tutorial has them (nbgrader cut out the solution region and left the stub)
        assert [_source(c) for c in released if c not in checks] == tutorial
        assert [c["metadata"]["nbgrader"]["points"] for c in checks] == list(course.points[path.stem].values())
        assert all(c["metadata"]["nbgrader"]["locked"] for c in checks)
        instructor = "\n".join(_source(c) for c in _cells(source))
        assert [c["metadata"]["nbgrader"]["grade_id"] for c in checks] == [check_id(k) for k in course.points[path.stem]]
        for key in course.points[path.stem]:
            assert f"### BEGIN SOLUTION\n{ex.solution_code(key)}\n### END SOLUTION" in instructor
    notes = (course.instructor / "NOTES.md").read_text()
    total = sum(sum(t.values()) for t in course.points.values())
    assert f"{len(ex.exercises())} exercises, {total} points" in notes
    assert all(ex.solution_code(e.key) in notes for e in ex.exercises())


def test_student_edition_and_its_install_have_no_solution_text(course, tmp_path):
    assert course.wheel is not None and course.wheel.is_file()
    with zipfile.ZipFile(course.wheel) as wheel:
        names = wheel.namelist()
        assert not [n for n in names if "exercises/solutions" in n]
        assert "layerq_nb/exercises/nb06.py" in names
        wheel.extractall(tmp_path / "unzipped")
        record = wheel.read(next(n for n in names if n.endswith("RECORD"))).decode()
        assert {line.split(",")[0] for line in record.splitlines()} == set(names)
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(course.wheel)], check=True)
    files = [p for folder in (course.student, tmp_path / "unzipped", target) for p in folder.rglob("*")
             if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".txt", ".json", "") and ".whl" not in p.name]
    assert len(files) > 60
    assert not leaks(files)
    # the student install imports, keeps its checks and hints, and says plainly that it has no solutions
    probe = ("import layerq_nb, sys; from layerq_nb import exercises as ex\n"
             "assert layerq_nb.__file__.startswith(sys.argv[1]), layerq_nb.__file__\n"
             "print(ex.solution('06.2')); print(ex.hint('06.2', 1)[:20])\n"
             "try:\n    ex.solution_code('06.2')\nexcept ex.NoSolutions as e:\n    print('NoSolutions')\n")
    done = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True, cwd=tmp_path, check=False,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ships no solutions" in done.stdout and "NoSolutions" in done.stdout


def _answer(nb_cells: list[dict], key: str, code: str) -> None:
    """Put `code` into exercise `key`'s answer cell just above its check, as a learner would."""
    cell = next(c for c in nb_cells if c["metadata"].get("nbgrader", {}).get("grade_id") == answer_id(key))
    lines = _source(cell).split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("ex.check("))
    cell["source"] = "\n".join(lines[:at] + code.strip("\n").split("\n") + lines[at:])


def _submit(folder: Path, student: str, release: Path, answers: dict[str, str]) -> None:
    nb = json.loads(release.read_text(encoding="utf-8"))
    for key, code in answers.items():
        _answer(nb["cells"], key, code)
    (folder / student).mkdir(parents=True)
    (folder / student / release.name).write_text(json.dumps(nb), encoding="utf-8")


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_build_then_grade_scores_solved_blank_and_partial(course, tmp_path):
    release = course.student / "notebooks" / "06_transfer_regret.ipynb"
    submissions = tmp_path / "submissions"
    _submit(submissions, "blank", release, {})
    _submit(submissions, "solved", release, {k: ex.solution_code(k) for k in ("06.1", "06.2", "06.3")})
    wrong = "def regret_curve(q_target, direction, deltas, budget, beta=1.0, upper=np.inf):\n" \
            "    return np.asarray(deltas) ** 2, 1.0      # a made-up curve: the check must catch it"
    _submit(submissions, "partial", release, {"06.1": ex.solution_code("06.1"), "06.2": ex.solution_code("06.2"),
                                              "06.3": wrong})
    (submissions / "partial" / "notes.txt").write_text("not a notebook")
    out = tmp_path / "results"
    assert cli.main(["grade", str(submissions), "--course", str(course.instructor.parent), "--out", str(out)]) == 0
    rows = _csv(out / "scores.csv")
    columns = ["06.1", "06.2", "06.3"]
    assert {s: [rows[s][k] for k in columns] + [rows[s]["total"]] for s in ("solved", "blank", "partial")} == {
        "solved": ["1", "3", "3", "7"], "blank": ["0", "0", "0", "0"], "partial": ["1", "3", "0", "4"]}
    assert rows["(max)"]["total"] == str(sum(sum(t.values()) for t in course.points.values()))
    assert rows["solved"]["00.1"] == "0"                  # a notebook not handed in scores zero
    summary = (out / "feedback" / "partial" / "summary.md").read_text()
    assert f"4 of {rows['(max)']['total']} points" in summary
    assert "| 06.3 | 0/3 | AssertionError:" in summary and "| 06.2 | 3/3 | passed |" in summary
    assert (out / "feedback" / "solved" / "06_transfer_regret.html").stat().st_size > 10_000


TINY = {"cells": [
    {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": "# 04 · A tiny course\n\nTwo exercises."},
    {"cell_type": "code", "execution_count": None, "id": "setup", "metadata": {}, "outputs": [],
     "source": "import numpy as np\nfrom layerq_nb import exercises as ex"},
    {"cell_type": "code", "execution_count": None, "id": "ex1", "metadata": {}, "outputs": [],
     "source": "def allocation_at(nu, q, c, beta, lower, upper):\n    raise NotImplementedError\n\n"
               "ex.check(\"04.1\", allocation_at)"},
    {"cell_type": "code", "execution_count": None, "id": "ex2", "metadata": {}, "outputs": [],
     "source": "def bisect_nu(spend, budget):\n    raise NotImplementedError\n\nex.check(\"04.2\", bisect_nu)"},
], "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5}


@pytest.mark.slow
def test_grade_contains_a_crash_a_flood_and_an_endless_loop(tmp_path):
    from layerq_nb.course.editions import build
    from layerq_nb.course.grade import grade
    source = tmp_path / "tutorials"
    source.mkdir()
    (source / "04_tiny.ipynb").write_text(json.dumps(TINY))
    mark_notebook(source / "04_tiny.ipynb")
    edition = build(tmp_path / "course", tutorials=source, wheel=False)
    release = edition.student / "notebooks" / "04_tiny.ipynb"
    submissions = tmp_path / "submissions"
    solved = {k: ex.solution_code(k) for k in ("04.1", "04.2")}
    _submit(submissions, "crash", release, {"04.1": solved["04.1"], "04.2": "raise RuntimeError('boom')"})
    _submit(submissions, "flood", release, {"04.1": "print('x' * 5_000_000)\n" + solved["04.1"]})
    _submit(submissions, "loop", release, {"04.1": "while True:\n    pass", "04.2": solved["04.2"]})
    grades = grade(submissions, course=tmp_path / "course", out=tmp_path / "results", cell_timeout=20,
                   notebook_timeout=600)
    assert grades.table() == {"crash": {"04.1": 3, "04.2": 0}, "flood": {"04.1": 3, "04.2": 0},
                              "loop": {"04.1": 0, "04.2": 3}}
    messages = {(s.student, s.exercise): s.message for s in grades.scores}
    # the answer cell stopped before its check (raised, or was interrupted): the test cell says so
    assert "04.2 was never checked" in messages["crash", "04.2"]
    assert "04.1 was never checked" in messages["loop", "04.1"]
    looped = json.loads((tmp_path / "results" / "nbgrader" / "autograded" / "loop" / "04_tiny" / "04_tiny.ipynb").read_text())
    assert "CellTimeoutError" in json.dumps(looped["cells"][2]["outputs"])
    graded = tmp_path / "results" / "nbgrader" / "autograded" / "flood" / "04_tiny" / "04_tiny.ipynb"
    assert graded.stat().st_size < 300_000                # 5 MB printed, clipped to 100 kB
    assert (tmp_path / "results" / "feedback" / "flood" / "04_tiny.html").stat().st_size < 1_000_000

    # a notebook that outlives the whole-notebook limit is killed with its kernel and scores zero, with a note
    late = grade(submissions, course=tmp_path / "course", out=tmp_path / "late", notebook_timeout=1)
    assert late.table()["loop"] == {"04.1": 0, "04.2": 0}
    assert any("stopped after 1 s" in n for n in late.notes["loop"])
    assert "stopped after" in (tmp_path / "late" / "feedback" / "loop" / "summary.md").read_text()


@pytest.mark.slow
def test_grade_puts_back_missing_check_cells_and_adds_to_earlier_results(tmp_path):
    from layerq_nb.course.editions import build
    from layerq_nb.course.grade import grade
    source = tmp_path / "tutorials"
    source.mkdir()
    tutorial = source / "04_tiny.ipynb"
    tutorial.write_text(json.dumps(TINY))
    mark_notebook(tutorial)
    edition = build(tmp_path / "course", tutorials=source, wheel=False)
    release = edition.student / "notebooks" / "04_tiny.ipynb"
    solved = {k: ex.solution_code(k) for k in ("04.1", "04.2")}
    week1, week2, out = tmp_path / "week1", tmp_path / "week2", tmp_path / "results"
    _submit(week1, "copy", tutorial, solved)                 # the tutorial itself: no autograder cells
    _submit(week1, "edition", release, {"04.1": solved["04.1"]})
    first = grade(week1, course=tmp_path / "course", out=out)
    assert first.table() == {"copy": {"04.1": 3, "04.2": 3}, "edition": {"04.1": 3, "04.2": 0}}
    assert any("no autograder cells" in n and "04.1, 04.2" in n for n in first.notes["copy"])
    assert "no autograder cells" in (out / "feedback" / "copy" / "summary.md").read_text()

    # one student re-graded into the same folder: the others' grades and feedback stay
    _submit(week2, "edition", release, solved)
    second = grade(week2, course=tmp_path / "course", out=out)
    assert second.table() == {"copy": {"04.1": 3, "04.2": 3}, "edition": {"04.1": 3, "04.2": 3}}
    rows = _csv(out / "scores.csv")
    assert (rows["copy"]["total"], rows["edition"]["total"], rows["(max)"]["total"]) == ("6", "6", "6")
    assert (out / "feedback" / "copy" / "04_tiny.html").is_file()
    assert "6 of 6 points" in (out / "feedback" / "edition" / "summary.md").read_text()

    # a results folder of another build of the course is refused before anything is graded
    saved = json.loads((out / "scores.json").read_text())
    saved["scores"][0]["max_points"] = 5.0
    (out / "scores.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="another build of the course"):
        grade(week2, course=tmp_path / "course", out=out)


def test_merge_keeps_notes_about_notebooks_not_graded_again():
    from layerq_nb.course.grade import Score, _merge
    earlier = [Score("alice", "01.1", 0, 3, "not graded: see the notes"), Score("alice", "04.1", 0, 3, "not handed in")]
    notes = {"alice": ["01_gradient_isolation: stopped after 1800 s (the notebook's time limit): scored zero",
                       "04_allocation.ipynb: an old note about 04"]}
    now = [Score("alice", "01.1", 0, 3, "not handed in"), Score("alice", "04.1", 3, 3, "passed")]
    scores, merged = _merge(earlier, notes, now, {"alice": ["04_allocation.ipynb: this run's note"]},
                            {"alice": {"04_allocation": Path("04_allocation.ipynb")}})
    assert [(s.exercise, s.points, s.message) for s in scores] == [("01.1", 0, "not graded: see the notes"),
                                                                    ("04.1", 3, "passed")]
    assert merged == {"alice": [notes["alice"][0], "04_allocation.ipynb: this run's note"]}


def test_check_cells_are_put_back_only_into_a_notebook_shape_and_without_ids_before_nbformat_4_5():
    from layerq_nb.course.grade import with_check_cells
    release = {"cells": [
        {"cell_type": "code", "id": "a", "metadata": {"nbgrader": {"grade_id": answer_id("04.1"), "solution": True}},
         "source": "x = None", "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": check_id("04.1"), "metadata": {"nbgrader": {"grade_id": check_id("04.1"), "grade": True}},
         "source": "assert ex.passed('04.1')", "outputs": [], "execution_count": None}]}
    colab = {"nbformat": 4, "nbformat_minor": 0, "metadata": {}, "cells": [
        {k: v for k, v in release["cells"][0].items() if k != "id"}]}
    fixed, restored = with_check_cells(colab, release)
    assert restored == ["04.1"] and [c["metadata"]["nbgrader"]["grade_id"] for c in fixed["cells"]] == \
        [answer_id("04.1"), check_id("04.1")]
    assert "id" not in fixed["cells"][1] and colab["cells"] == fixed["cells"][:1]     # the input is left alone
    assert with_check_cells(fixed, release) == (fixed, [])                           # nothing missing: as it is
    # a cell without nbgrader metadata is no answer cell: nothing to put back after it
    assert with_check_cells({"cells": [{"metadata": {"nbgrader": None}}]}, release)[1] == []
    with pytest.raises(TypeError):      # not a notebook's shape: grade() skips it, and nbgrader reports it
        with_check_cells({"cells": None}, release)


@pytest.mark.parametrize("option", [dict(cell_timeout=0), dict(cell_timeout=2.5), dict(max_bytes=-1),
                                    dict(notebook_timeout=0), dict(notebook_timeout=float("nan"))])
def test_grade_refuses_bad_limits_before_anything(tmp_path, option):
    from layerq_nb.course.grade import grade
    with pytest.raises(ValueError, match=f"{next(iter(option))} must be"):
        grade(tmp_path / "nothing", course=tmp_path / "no-course", out=tmp_path / "out", **option)
    assert not (tmp_path / "out").exists()
