"""The two constants of the transfer-regret bound, under the name tutorial 06 imports them by.

They live in `layerq_nb.regret` (with `regret_bound`, which uses them): see its docstring for the two
routes, Amaefuna et al., arXiv 2603.00910, Theorem 4.
"""
from __future__ import annotations

from .regret import package_bound, paper_bound

__all__ = ["package_bound", "paper_bound"]
