"""LayerScores: one number per layer (or module), normalised to q on the simplex, with comparisons.

q_k = v_k / sum_j v_j (seed 003: normalised layer gains) feeds the MDL programs. Numpy only: the
type can be loaded, compared and plotted without torch.
"""
from __future__ import annotations

import json
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

    def spearman(self, other: "LayerScores") -> float:
        """Spearman rank correlation of the two score vectors (same layers)."""
        from scipy.stats import spearmanr
        self._check_same_layers(other)
        return float(spearmanr(self.values, other.values).statistic)

    def kendall(self, other: "LayerScores") -> float:
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
    def from_json(cls, text: str) -> "LayerScores":
        d = json.loads(text)
        return cls(method=d["method"], values=np.array(d["values"]), names=tuple(d["names"]), metadata=d["metadata"])

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path) -> "LayerScores":
        return cls.from_json(Path(path).read_text())


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
