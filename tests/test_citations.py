"""Docstrings cite what a reader can follow (authors, title, arXiv id), never the project's private notes,
which do not ship with the package."""
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "layerq_nb"
PRIVATE = re.compile(r"DESIGN\.md|\bseeds?[ /]0\d\d|layerif\.md|influence_libs\.md|research/", re.IGNORECASE)


def test_no_module_cites_the_private_notes():
    found = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if PRIVATE.search(line)]
    assert not found, "cite authors, title and arXiv id instead:\n" + "\n".join(found)


def test_the_papers_are_cited_by_arxiv_id():
    text = "\n".join(path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py"))
    for arxiv in ("2505.23811", "2409.14381", "2603.00910", "1503.05671", "1806.03884", "2306.11695",
                  "2301.00774", "2310.05175", "1705.07874"):
        assert arxiv in text, f"arXiv {arxiv} is cited nowhere in the package"
