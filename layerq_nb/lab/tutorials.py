"""The learner's copies of the tutorials, as plain file operations (the server extension's REST handlers
call these; tests call them directly).

A learner never edits the package's notebooks: the first "open" copies a tutorial into the learner's
folder (a folder *inside the Jupyter server's root*, so JupyterLab can open it; default
`layerq-tutorials`), later opens reuse that copy, and "reset" keeps the learner's version as a
timestamped backup in `<folder>/backups/` before it writes a clean copy. Every write goes through a
temporary file and `os.replace`, so a crash never leaves half a notebook.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..tutorials import tutorial, tutorials, tutorials_folder

DEFAULT_FOLDER = "layerq-tutorials"
BACKUPS = "backups"
SYLLABUS = "README.md"


@dataclass(frozen=True)
class Tutorial:
    """One card of the launcher: `number` '03', `name` '03_layer_quality', `title` from the notebook's
    first heading, `summary` the syllabus's one line, `time` the syllabus's FAST run time."""
    number: str
    name: str
    title: str
    summary: str
    time: str

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Copy:
    """Where the learner's copy is (a path relative to the server root, '/'-separated), and whether this
    call created it."""
    path: str
    created: bool


@dataclass(frozen=True)
class Reset:
    """The clean copy's path and the backup of the learner's version (None when there was none to keep)."""
    path: str
    backup: str | None


_SYMBOLS = {"zeta": "ζ", "delta": "δ", "nu": "ν", "otimes": "⊗", "le": "≤", "ge": "≥", "lVert": "‖", "rVert": "‖"}


def plain(text: str) -> str:
    """The little inline LaTeX of the titles and the syllabus as plain text for the launcher cards:
    '$\\zeta^2$' -> 'ζ²', '$A \\otimes G$' -> 'A ⊗ G'; other commands are kept as they are."""
    def convert(match):
        inner = re.sub(r"\\([A-Za-z]+)\b", lambda m: _SYMBOLS.get(m.group(1), m.group(0)), match.group(1))
        return inner.replace("^2", "²").replace("\\,", " ")
    return re.sub(r"\$([^$]+)\$", convert, text)


def _title(notebook: Path) -> str:
    """The first markdown heading, without its leading 'NN · '."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        for line in "".join(cell.get("source", "")).splitlines():
            if line.startswith("#"):
                return plain(re.sub(r"^\d\d\s*[·:.\-]\s*", "", line.lstrip("#").strip()))
    return notebook.stem[3:].replace("_", " ")


def _syllabus_rows(readme: Path) -> dict[str, tuple[str, str]]:
    """'03' -> (story, FAST time) from the syllabus table of notebooks/README.md:
    | # | notebook | the story | what you build | FAST blank / solved |."""
    rows = {}
    if not readme.is_file():
        return rows
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"\d\d", cells[0]):
            time = cells[-1].split("/")[0].strip()
            rows[cells[0]] = (plain(cells[2]), f"{time} to run (FAST mode)" if time else "")
    return rows


def catalogue() -> list[Tutorial]:
    """Every tutorial the package ships, in order, with what the launcher shows."""
    rows = _syllabus_rows(tutorials_folder() / SYLLABUS)
    found = []
    for number, path in tutorials().items():
        summary, time = rows.get(number, ("", ""))
        found.append(Tutorial(number=number, name=path.stem, title=_title(path), summary=summary, time=time))
    return found


def learner_folder(root: str | os.PathLike, folder: str = DEFAULT_FOLDER) -> Path:
    """The learner's folder as an absolute path, which must lie inside the server root `root` (JupyterLab
    can only open files there). `folder` is relative to the root ('layerq-tutorials', 'course/tutorials')
    or absolute inside it; '~' is expanded."""
    root = Path(root).expanduser().resolve()
    text = str(folder or DEFAULT_FOLDER).strip()
    candidate = Path(text).expanduser()
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"the tutorials folder {text!r} is outside the Jupyter server's root {root}: "
                         f"JupyterLab could not open it. Fix: choose a folder inside {root} in Settings > "
                         "LayerQ (e.g. 'layerq-tutorials')")
    return target


def _relative(path: Path, root) -> str:
    return path.relative_to(Path(root).expanduser().resolve()).as_posix()


def _write_atomic(source: Path, target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def open_copy(number: str, *, root: str | os.PathLike, folder: str = DEFAULT_FOLDER) -> Copy:
    """The learner's copy of tutorial `number`, copied from the package on first use and never
    overwritten afterwards (it holds the learner's work)."""
    source = tutorial(number)
    target = learner_folder(root, folder) / source.name
    created = not target.exists()
    if created:
        _write_atomic(source, target)
    return Copy(path=_relative(target, root), created=created)


def backup_name(name: str, now: _dt.datetime) -> str:
    """'03_layer_quality.ipynb' -> '03_layer_quality-2026-12-01T03-30-00.ipynb' (sorts by time; no ':'
    so it is a valid file name everywhere)."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-{now.strftime('%Y-%m-%dT%H-%M-%S')}{dot}{suffix}"


def reset_copy(number: str, *, root: str | os.PathLike, folder: str = DEFAULT_FOLDER,
               now: _dt.datetime | None = None) -> Reset:
    """Move the learner's copy of tutorial `number` to `<folder>/backups/<name>-<time>.ipynb` (a second
    backup in the same second gets '-2', ...), then write a clean copy from the package."""
    source = tutorial(number)
    target = learner_folder(root, folder) / source.name
    backup = None
    if target.exists():
        stamp = backup_name(source.name, now or _dt.datetime.now())
        backup = target.parent / BACKUPS / stamp
        n = 1
        while backup.exists():
            n += 1
            backup = backup.with_name(stamp.replace(".ipynb", f"-{n}.ipynb"))
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, backup)          # copy first: the learner's file exists at every moment
    _write_atomic(source, target)
    return Reset(path=_relative(target, root), backup=_relative(backup, root) if backup else None)


def syllabus_copy(*, root: str | os.PathLike, folder: str = DEFAULT_FOLDER) -> str:
    """The package's syllabus (notebooks/README.md) as `<folder>/README.md`, rewritten from the package on
    every call (it is reference text, not the learner's work); its path relative to the root."""
    target = learner_folder(root, folder) / SYLLABUS
    _write_atomic(tutorials_folder() / SYLLABUS, target)
    return _relative(target, root)
