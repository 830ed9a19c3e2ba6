"""Grade a folder of student notebooks with nbgrader: points per student x exercise, and feedback.

`grade(submissions, course=BUILD, out=RESULTS)` takes ``submissions/<student>/<NN_name>.ipynb`` (a student's
folder holds the notebooks they hand in; a file is matched to its tutorial by its two leading digits), and
the editions `build` wrote. In a fresh nbgrader course folder (``out/nbgrader``, a copy of the instructor
edition's source and gradebook) it runs ``nbgrader autograde`` once per student and notebook, each in its
own process group with a wall-clock limit, then writes

- ``out/scores.csv``: one row per student, one column per exercise (points), a total, and a ``(max)`` row;
- ``out/feedback/<student>/``: nbgrader's HTML feedback per notebook, and ``summary.md`` with each
  exercise's points and what its check said.

Grading into an `out` that holds earlier results adds to them (``out/scores.json`` keeps every score and
its message): a notebook graded now replaces that student's earlier grades of the same notebook, and
everything else stays, so each week's batch, or one student's re-grade, goes into the same folder.
A submitted notebook that lacks the locked autograder cells (a tutorial copy from the launcher, `layerq
lab` or Colab rather than the student edition) gets them back from the course's release before grading,
with a note: its answer cells carry the same nbgrader ids as the student edition's.

Containment: nbgrader interrupts a cell that runs past `cell_timeout` seconds and goes on with the next
(an endless loop costs its exercise, not the notebook); `ClipOutput` cuts any output to `max_bytes`; a
notebook that still runs past `notebook_timeout` (a kernel that ignores interrupts) is killed with its
kernel and scores zero with a note. No case stops the grading of the others. Submissions run with
`LAYERQ_EXERCISES=learn` (never `solve`, which would run the shipped solutions) and `LAYERQ_NO_SOLUTIONS=1`.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

from .editions import nbgrader, write_config
from .markers import exercise_key

__all__ = ["ClipOutput", "Score", "Grades", "grade", "collect", "with_check_cells"]


class ClipOutput(NbGraderPreprocessor):
    """Cut every output of a code cell to `max_bytes` characters (nbgrader's LimitOutput counts lines, so
    one enormous line would pass it)."""

    max_bytes = Integer(100_000, help="largest output kept per stream or data field, in characters").tag(config=True)

    def _clip(self, text):
        if isinstance(text, list):
            text = "".join(text)
        if len(text) <= self.max_bytes:
            return text
        return text[:self.max_bytes] + f"\n... output clipped: {len(text):,} characters, {self.max_bytes:,} kept ..."

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            for output in cell.outputs:
                if output.output_type == "stream":
                    output.text = self._clip(output.text)
                elif output.output_type == "error":
                    output.evalue = self._clip(output.evalue)
                elif "data" in output:
                    for mime, value in output.data.items():
                        if isinstance(value, (str, list)) and not mime.startswith("image/"):
                            output.data[mime] = self._clip(value)
        return cell, resources


@dataclass(frozen=True)
class Score:
    """One student's points on one exercise, and why."""
    student: str
    exercise: str
    points: float
    max_points: float
    message: str


@dataclass(frozen=True)
class Grades:
    """What `grade` wrote: the scores, the CSV and the feedback folder."""
    scores: tuple[Score, ...]
    csv: Path
    feedback: Path
    notes: dict                               # {student: [what went wrong outside the exercises]}

    def table(self) -> dict[str, dict[str, float]]:
        """{student: {exercise: points}}."""
        out: dict[str, dict[str, float]] = {}
        for s in self.scores:
            out.setdefault(s.student, {})[s.exercise] = s.points
        return out

    def total(self, student: str) -> float:
        return sum(self.table()[student].values())


def collect(submissions: Path, assignments: list[str]) -> tuple[dict, dict]:
    """{student: {assignment: notebook path}} from ``submissions/<student>/*.ipynb``, and the notes of files
    that match no tutorial."""
    if not Path(submissions).is_dir():
        raise ValueError(f"no folder {submissions}: expected {submissions}/<student>/<NN_name>.ipynb")
    found, notes = {}, {}
    for folder in sorted(p for p in Path(submissions).iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[folder.name] = {}
        for path in sorted(folder.glob("*.ipynb")):
            match = [a for a in assignments if path.stem == a] or [a for a in assignments if path.name[:2] == a[:2]]
            if not match:
                notes.setdefault(folder.name, []).append(f"{path.name}: matches no tutorial of this course; not graded")
            elif match[0] in found[folder.name]:
                notes.setdefault(folder.name, []).append(f"{path.name}: a second notebook for {match[0]}; not graded")
            else:
                found[folder.name][match[0]] = path
    if not found:
        raise ValueError(f"no student folders in {submissions}: expected {submissions}/<student>/<NN_name>.ipynb")
    return found, notes


def with_check_cells(submitted: dict, release: dict) -> tuple[dict, list[str]]:
    """`submitted` with every locked autograder cell of `release` it lacks put back just after its exercise's
    answer cell (matched by nbgrader grade_id), and the exercise keys put back. A tutorial copy has the
    answer cells (the tutorials carry their nbgrader ids) but no test cells; without them nbgrader has
    nothing to score and a right answer would get zero."""
    def grade_id(cell):
        return ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id", "")
    have = {grade_id(c) for c in submitted.get("cells", [])}
    missing = [c for c in release.get("cells", []) if grade_id(c).startswith("check-") and grade_id(c) not in have]
    if not missing:
        return submitted, []
    nb = json.loads(json.dumps(submitted))
    cells, restored = nb["cells"], []
    for check in missing:
        answer = "answer-" + grade_id(check)[len("check-"):]
        at = next((i for i, c in enumerate(cells) if grade_id(c) == answer), None)
        if at is None:       # the answer cell was deleted too: nbgrader scores the exercise zero, as it should
            continue
        check = json.loads(json.dumps(check))
        if nb.get("nbformat_minor", 0) < 5:      # nbformat 4.0-4.4 (Colab saves 4.0) has no cell ids
            check.pop("id", None)
        cells.insert(at + 1, check)
        restored.append(exercise_key(grade_id(check)))
    return nb, restored


def _put_back_checks(path: Path, target: Path, release: dict | None) -> list[str]:
    """`with_check_cells` on the submission at `path`, written to `target` when cells were put back; the
    exercise keys put back. A file that is not a readable notebook is left as it is: nbgrader reports it
    for this student alone."""
    if release is None:
        return []
    try:
        fixed, restored = with_check_cells(json.loads(path.read_text(encoding="utf-8")), release)
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError):
        return []
    if restored:
        target.write_text(json.dumps(fixed, indent=1, ensure_ascii=False), encoding="utf-8")
    return restored


def _load_previous(out: Path, points: dict[str, float]) -> tuple[list[Score], dict]:
    """The scores and notes an earlier `grade` left in `out` (none when it holds none); refused when they
    belong to another build of the course (other exercises or points)."""
    path = out / "scores.json"
    if not path.is_file():
        if (out / "scores.csv").is_file():
            raise ValueError(f"{out} holds a scores.csv without its scores.json (an older layerq_nb wrote it): "
                             f"grade into a new folder, or delete {out} to start over")
        return [], {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        scores = [Score(**row) for row in saved["scores"]]
        notes = {student: list(lines) for student, lines in saved.get("notes", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a scores file this grader wrote ({error}): delete {out} to start over, "
                         f"or grade into another folder") from None
    other = {(s.exercise, s.max_points) for s in scores} - set(points.items())
    if other:
        raise ValueError(f"{out} holds grades of another build of the course (exercises or points differ: "
                         f"{sorted(other)[:3]}): grade into another folder, or delete {out} to start over")
    return scores, notes


def _autograde(work: Path, assignment: str, student: str, *, env: dict, timeout: float) -> str | None:
    """Run nbgrader autograde for one student's notebook in its own process group; None when it finished,
    else why not. The process group takes the kernel with it when the wall-clock limit kills it."""
    process = subprocess.Popen([sys.executable, "-m", "nbgrader", "autograde", assignment, "--student", student,
                                "--force", "--log-level=WARN"], cwd=work, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return f"stopped after {timeout:.0f} s (the notebook's time limit): scored zero"
    if process.returncode != 0:
        return f"nbgrader autograde failed: {log[-500:]}"
    return None


def _messages(notebook: Path) -> dict[str, str]:
    """{exercise key: what its autograder cell said} from an autograded notebook."""
    if not notebook.is_file():
        return {}
    out = {}
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        name = meta.get("grade_id", "") if meta.get("grade") else ""
        if not name.startswith("check-"):
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        out[exercise_key(name)] = (f"{errors[0]['ename']}: {errors[0]['evalue']}".strip() if errors else "passed")
    return out


def grade(submissions, *, course, out, cell_timeout: int = 180, notebook_timeout: float = 1800,
          max_bytes: int = 100_000, fast: bool = True) -> Grades:
    """Grade every notebook under ``submissions/<student>/`` against the editions built in `course`
    (the folder `build` wrote, or its ``instructor/``); write ``scores.csv`` and ``feedback/`` into `out`."""
    for name, value, least in (("cell_timeout", cell_timeout, 1), ("max_bytes", max_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    if isinstance(notebook_timeout, bool) or not isinstance(notebook_timeout, (int, float)) \
            or not 0 < notebook_timeout < float("inf"):
        raise ValueError(f"notebook_timeout must be a number of seconds > 0, got {notebook_timeout!r}")
    course, out = Path(course), Path(out)
    instructor = course / "instructor" if (course / "instructor").is_dir() else course
    if not (instructor / "gradebook.db").is_file() or not (instructor / "source").is_dir():
        raise FileNotFoundError(f"{course} holds no instructor edition: run `layerq course build {course}` first")
    assignments = sorted(p.name for p in (instructor / "source").iterdir() if p.is_dir())
    found, notes = collect(Path(submissions), assignments)
    course_points = assignments_points(instructor, assignments)
    earlier, earlier_notes = _load_previous(out, course_points)     # refused before any grading

    work = out / "nbgrader"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(instructor / "source", work / "source")
    shutil.copy2(instructor / "gradebook.db", work / "gradebook.db")
    write_config(work, cell_timeout=cell_timeout, max_bytes=max_bytes)
    releases = {}                               # each release read once, not once per student
    for assignment in assignments:
        release = instructor / "release" / assignment / f"{assignment}.ipynb"
        if release.is_file():
            releases[assignment] = json.loads(release.read_text(encoding="utf-8"))
    for student, table in found.items():
        for assignment, path in table.items():
            target = work / "submitted" / student / assignment / f"{assignment}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            restored = _put_back_checks(path, target, releases.get(assignment))
            if restored:
                notes.setdefault(student, []).append(
                    f"{path.name}: had no autograder cells (a tutorial copy, not the student edition); the "
                    f"checks of {', '.join(restored)} were put back from the course before grading")

    env = {k: v for k, v in os.environ.items() if k != "LAYERQ_SOLVE"}
    env.update(LAYERQ_FAST="1" if fast else "0", LAYERQ_EXERCISES="learn", LAYERQ_NO_SOLUTIONS="1")
    graded = set()
    for student, table in found.items():
        for assignment in table:
            why = _autograde(work, assignment, student, env=env, timeout=notebook_timeout)
            if why is None:
                graded.add((student, assignment))
            else:
                notes.setdefault(student, []).append(f"{assignment}: {why}")

    now = _scores(work, found, graded, assignments, course_points)
    scores, notes = _merge(earlier, earlier_notes, now, notes, found)
    feedback = out / "feedback"
    for assignment in sorted({a for s, a in graded}):
        nbgrader(work, "generate_feedback", assignment, "--force", "--log-level=WARN", env=env)
    for student, table in found.items():
        folder = feedback / student
        folder.mkdir(parents=True, exist_ok=True)
        for assignment in table:                 # this run's notebooks replace their earlier feedback
            (folder / f"{assignment}.html").unlink(missing_ok=True)
        for html in sorted((work / "feedback" / student).glob("*/*.html")):
            shutil.copy2(html, folder / html.name)
        rows = [s for s in scores if s.student == student]
        (folder / "summary.md").write_text(_summary(student, rows, notes.get(student, [])), encoding="utf-8")
    grades = Grades(tuple(scores), out / "scores.csv", feedback, notes)
    _write_csv(grades, course_points)
    (out / "scores.json").write_text(json.dumps({"scores": [vars(s) for s in scores], "notes": notes}, indent=1),
                                     encoding="utf-8")
    return grades


def _merge(earlier: list[Score], earlier_notes: dict, now: list[Score], notes: dict,
           found: dict) -> tuple[list[Score], dict]:
    """This run's scores over the earlier ones: a notebook handed in now replaces the student's earlier
    grades of it; a notebook not handed in now keeps its earlier grade (a student new to this run who
    never handed it in gets this run's "not handed in"). Notes follow the same rule, by notebook number."""
    def handed_in(student, exercise):
        return any(a[:2] == exercise.split(".")[0] for a in found.get(student, {}))
    kept = {(s.student, s.exercise): s for s in earlier}
    for s in now:
        if handed_in(s.student, s.exercise) or (s.student, s.exercise) not in kept:
            kept[(s.student, s.exercise)] = s
    order = list(dict.fromkeys([s.student for s in earlier] + [s.student for s in now]))
    exercises = list(dict.fromkeys(s.exercise for s in now))
    merged = [kept[(student, e)] for student in order for e in exercises if (student, e) in kept]
    def still_true(student, line):    # an earlier note about a notebook not handed in again this run
        number = line[:2]
        return number.isdigit() and not any(a[:2] == number for a in found.get(student, {}))
    merged_notes = {}
    for student in order:
        lines = [line for line in earlier_notes.get(student, [])
                 if student not in found or still_true(student, line)] + notes.get(student, [])
        if lines:
            merged_notes[student] = lines
    return merged, merged_notes


def assignments_points(instructor: Path, assignments: list[str]) -> dict[str, float]:
    """{exercise key: points} of the course, in order, from the autograder cells of its source notebooks."""
    points = {}
    for assignment in assignments:
        for path in sorted((instructor / "source" / assignment).glob("*.ipynb")):
            for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
                meta = cell.get("metadata", {}).get("nbgrader", {})
                if meta.get("grade") and meta.get("grade_id", "").startswith("check-"):
                    points[exercise_key(meta["grade_id"])] = float(meta["points"])
    return points


def _scores(work: Path, found: dict, graded: set, assignments: list[str], points: dict[str, float]) -> list[Score]:
    from nbgrader.api import Gradebook, MissingEntry
    by_assignment = {a: [k for k in points if k.split(".")[0] == a[:2]] for a in assignments}
    scores = []
    with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as gb:
        for student, table in found.items():
            for assignment in assignments:
                got, messages = {}, {}
                if (student, assignment) in graded:
                    try:
                        nb = gb.find_submission_notebook(assignment, assignment, student)
                        got = {exercise_key(g.name): float(g.score) for g in nb.grades if g.name.startswith("check-")}
                    except MissingEntry:
                        pass
                    messages = _messages(work / "autograded" / student / assignment / f"{assignment}.ipynb")
                for key in by_assignment[assignment]:
                    if assignment not in table:
                        why = "not handed in"
                    elif (student, assignment) not in graded:
                        why = "not graded: see the notes"
                    else:
                        why = messages.get(key, "not run")
                    scores.append(Score(student, key, got.get(key, 0.0), points[key], why))
    return scores


def _write_csv(grades: Grades, points: dict[str, float]) -> None:
    keys = list(points)
    table = grades.table()
    with open(grades.csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *keys, "total"])
        for student, row in table.items():
            writer.writerow([student, *(_number(row.get(k, 0.0)) for k in keys), _number(sum(row.values()))])
        writer.writerow(["(max)", *(_number(points[k]) for k in keys), _number(sum(points.values()))])


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _summary(student: str, rows: list[Score], notes: list[str]) -> str:
    got, total = sum(r.points for r in rows), sum(r.max_points for r in rows)
    lines = [f"# Feedback for {student}: {_number(got)} of {_number(total)} points", "",
             "| exercise | points | what the check said |", "|---|---|---|"]
    lines += [f"| {r.exercise} | {_number(r.points)}/{_number(r.max_points)} | {' '.join(r.message.replace('|', '/').split())[:300]} |"
              for r in rows]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    lines += ["", f"Graded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `layerq course grade` (nbgrader)."]
    return "\n".join(lines) + "\n"
