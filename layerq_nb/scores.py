"""LayerScores: one number per layer (or module), normalised to q on the simplex, with comparisons.

q_k = v_k / sum_j v_j (arXiv 2603.00910: normalised layer gains) feeds the MDL programs. Numpy only: the
type can be loaded, compared and plotted without torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .mdl import normalise

__all__ = ["LayerScores", "rank_table"]


@dataclass(frozen=True, eq=False)
class LayerScores:
    """Scores per layer from one method: `values` as computed, `q` normalised on the simplex."""
    method: str
    values: np.ndarray
    names: tuple[str, ...]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        values = np.asarray(self.values, dtype=float)
        if values.ndim != 1 or values.size != len(self.names):
            raise ValueError(f"{len(self.names)} names but values of shape {values.shape}")
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{self.method} score of {self.names[bad]} is {values[bad]}: not finite "
                             "(for zeta^2, raise the damping)")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", tuple(self.names))

    @property
    def q(self) -> np.ndarray:
        """values / sum(values) on the simplex; negative values (a Shapley value or a leave-one-out drop
        of a layer that hurts) count as no gain and are clipped to 0 first."""
        return normalise(np.clip(self.values, 0.0, None))

    def __len__(self) -> int:
        return self.values.size

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The n highest-scoring layers as (name, q), best first."""
        order = np.argsort(-self.q, kind="stable")[:n]
        return [(self.names[i], float(self.q[i])) for i in order]

    def spearman(self, other: LayerScores) -> float:
        """Spearman rank correlation of the two score vectors (same layers)."""
        from scipy.stats import spearmanr
        self._check_same_layers(other)
        return float(spearmanr(self.values, other.values).statistic)

    def kendall(self, other: LayerScores) -> float:
        """Kendall's tau between the two score vectors (same layers)."""
        from scipy.stats import kendalltau
        self._check_same_layers(other)
        return float(kendalltau(self.values, other.values).statistic)

    def _check_same_layers(self, other):
        if self.names != other.names:
            raise ValueError(f"scores cover different layers ({len(self)} vs {len(other)} names): compare like with like")

    def plot(self, ax=None, label: str | None = None):
        """Bar chart of q per layer; returns the matplotlib axes."""
        import matplotlib.pyplot as plt
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(self)), 2.6))
        ax.bar(np.arange(len(self)), self.q, label=label or self.method, alpha=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("q (normalised score)")
        task = self.metadata.get("task")
        ax.set_title(f"{self.method}" + (f" on {task}" if task else ""))
        return ax

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "values": self.values.tolist(), "names": list(self.names),
                           "metadata": self.metadata}, indent=1, default=_plain)

    @classmethod
    def from_json(cls, text: str, source: str = "the JSON text") -> LayerScores:
        """The inverse of `to_json`, checked: a file that is not one gets a ValueError naming what is wrong."""
        def bad(why):
            return ValueError(f"{source} is not a saved LayerScores: {why}. Save scores with scores.save(path) "
                              "(or `layerq score --out`)")
        try:
            d = json.loads(text)
        except ValueError as err:
            raise bad(f"not JSON ({err})") from None
        if not isinstance(d, dict):
            raise bad(f"a JSON {type(d).__name__}, not an object")
        missing = [k for k in ("method", "values", "names") if k not in d]
        if missing:
            raise bad(f"no {', '.join(repr(k) for k in missing)} field")
        method, values, names, meta = d["method"], d["values"], d["names"], d.get("metadata", {})
        if not isinstance(method, str):
            raise bad(f"'method' is {method!r}, not a string")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad("'names' is not a list of layer names")
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise bad("'values' is not a list of numbers")
        if not isinstance(meta, dict):
            raise bad("'metadata' is not an object")
        if len(values) != len(names):
            raise bad(f"{len(values)} values for {len(names)} names")
        arr = np.array(values, dtype=float)
        if method in _GAINS or method.startswith(_GAINS):
            neg = np.flatnonzero(arr < 0)
            if neg.size:
                raise bad(f"{method} gains are >= 0, but {names[neg[0]]} has {arr[neg[0]]:g} (a corrupt or "
                          "edited file)")
        try:
            return cls(method=method, values=arr, names=tuple(names), metadata=meta)
        except ValueError as err:
            raise bad(str(err)) from None

    def save(self, path) -> Path:
        """Write the scores as JSON (atomically: a failed write leaves no half file behind)."""
        path = Path(path)
        _write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path) -> LayerScores:
        path = Path(path)
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a saved LayerScores: not a text file") from None
        return cls.from_json(text, source=str(path))


_GAINS = ("zeta2", "grad_norm")    # methods whose values are gains, never negative


def _write_text(path: Path, text: str):
    """Write a text file through a temporary file renamed into place, so that an interrupted or failed
    write (Ctrl-C, a full disk) leaves the old file or none, never half of one. A path that exists and
    is not a regular file (/dev/null, a pipe) is written in place; a folder raises IsADirectoryError."""
    if path.exists() and not path.is_file():
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder: give a file name")
        with open(path, "w") as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def rank_table(scores: list[LayerScores]) -> str:
    """Markdown table of pairwise Spearman rank correlations between score vectors over the same layers."""
    labels = [s.method for s in scores]
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for a in scores:
        lines.append(f"| {a.method} | " + " | ".join(f"{a.spearman(b):+.2f}" for b in scores) + " |")
    return "\n".join(lines)
