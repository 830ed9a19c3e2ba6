"""`layerq course build|grade|render`: the teacher's commands. `register(subparsers)` adds them to the
`layerq` command; `python -m layerq_nb.course ...` runs them on their own."""
from __future__ import annotations

import argparse
import sys

__all__ = ["register", "main"]


def _notebooks(text: str) -> list[str]:
    return [part.strip().zfill(2) for part in text.split(",") if part.strip()]


def cmd_build(args) -> int:
    from .editions import build
    edition = build(args.out, notebooks=args.notebooks, wheel=not args.no_wheel)
    points = sum(sum(t.values()) for t in edition.points.values())
    print(f"instructor edition: {edition.instructor} (nbgrader source with solutions; NOTES.md)")
    print(f"student edition:    {edition.student} ({len(edition.assignments)} notebooks, {points} points"
          + (f"; wheel {edition.wheel.name}" if edition.wheel else "; no wheel") + ")")
    return 0


def cmd_grade(args) -> int:
    from .grade import grade
    grades = grade(args.submissions, course=args.course, out=args.out, cell_timeout=args.cell_timeout,
                   notebook_timeout=args.notebook_timeout, fast=not args.full)
    table = grades.table()
    for student in table:
        print(f"{student:>20}  {grades.total(student):g} points")
    for student, notes in grades.notes.items():
        for note in notes:
            print(f"{student:>20}  note: {note}")
    print(f"scores:   {grades.csv}\nfeedback: {grades.feedback}/<student>/")
    return 0


def cmd_render(args) -> int:
    from .render import render
    site = render(args.out, notebooks=args.notebooks, fast=not args.full, timeout=args.timeout)
    print(f"{len(site.pages)} page(s), {'FAST' if site.fast else 'full'} mode: open {site.folder / 'index.html'}")
    return 0


def register(subparsers, *, parents=()) -> argparse.ArgumentParser:
    """Add `course build|grade|render` to an argparse subparsers object; return the `course` parser."""
    course = subparsers.add_parser("course", parents=list(parents),
                                   help="teach with the tutorials: editions, grading, a rendered copy",
                                   description="Student and instructor editions (nbgrader), grading a folder "
                                               "of submissions, and an executed HTML copy. See notebooks/TEACHING.md.")
    sub = course.add_subparsers(dest="course_command", metavar="build|grade|render", required=True)
    which = dict(type=_notebooks, default=None, metavar="NN,NN", help="only these tutorials (default: all eight)")

    b = sub.add_parser("build", help="write the instructor and student editions into OUT")
    b.add_argument("out", help="folder for instructor/ and student/ (replaced)")
    b.add_argument("--notebooks", **which)
    b.add_argument("--no-wheel", action="store_true",
                   help="skip the student wheel (layerq_nb without solutions; needs a source checkout)")
    b.set_defaults(func=cmd_build)

    g = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/<NN_name>.ipynb: scores.csv and feedback")
    g.add_argument("submissions", help="a folder with one folder per student holding their notebooks")
    g.add_argument("--course", required=True, help="the folder `course build` wrote")
    g.add_argument("--out", required=True, help="folder for scores.csv, feedback/ and nbgrader's work; grading into it again adds to "
                        "what it holds (a notebook graded again replaces that student's earlier grade of it)")
    g.add_argument("--cell-timeout", type=int, default=180, help="seconds a cell may run (default 180)")
    g.add_argument("--notebook-timeout", type=float, default=1800,
                   help="seconds one notebook may run before it is killed and scored zero (default 1800)")
    g.add_argument("--full", action="store_true", help="run in full mode (default: LAYERQ_FAST=1)")
    g.set_defaults(func=cmd_grade)

    r = sub.add_parser("render", help="execute the tutorials and write HTML pages with outputs into OUT")
    r.add_argument("out", help="folder for the pages (index.html) and the executed notebooks")
    r.add_argument("--notebooks", **which)
    r.add_argument("--full", action="store_true", help="full mode (default FAST: LAYERQ_FAST=1)")
    r.add_argument("--timeout", type=int, default=900, help="seconds a cell may run (default 900)")
    r.set_defaults(func=cmd_render)
    return course


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="layerq")      # reads as `layerq course ...` in usage lines
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["course", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, ImportError) as error:
        print(f"layerq course {args.course_command}: error: {error}", file=sys.stderr)
        return 2
