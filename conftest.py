"""Loaded by every pytest run in this repository: the tutorials run in FAST mode unless LAYERQ_FAST is
set otherwise (`LAYERQ_FAST=0 pytest --nbmake notebooks/` runs them in full)."""
import os

os.environ.setdefault("LAYERQ_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
