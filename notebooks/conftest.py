"""`pytest --nbmake notebooks/` runs the tutorials in FAST mode unless LAYERQ_FAST is set otherwise."""
import os

os.environ.setdefault("LAYERQ_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
