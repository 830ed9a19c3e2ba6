"""Loaded by every pytest run in this repository: the tutorials run in FAST mode unless LAYERQ_FAST is
set otherwise (`LAYERQ_FAST=0 pytest --nbmake notebooks/` runs them in full), and with their exercises
blank: every check must report "not answered" and none may raise (`tests/test_notebooks_solved.py` runs
them again with the shipped solutions)."""
import os

os.environ.setdefault("LAYERQ_FAST", "1")
os.environ.setdefault("LAYERQ_EXERCISES", "blank")
os.environ.setdefault("MPLBACKEND", "Agg")

# the learner's copies the JupyterLab extension makes when `layerq lab` serves notebooks/: theirs, not tutorials
collect_ignore_glob = ["notebooks/layerq-tutorials/*"]
