"""The layerq-nb JupyterLab extension end to end: as installed by `pip install -e .` (no Node.js at install
time), in a real JupyterLab on 127.0.0.1 driven through Debian's chromium. The launcher shows the LayerQ
tutorials; a card creates and opens the learner's copy; the LayerQ menu resets it (the learner's unsaved
edit is saved into a timestamped backup, the clean copy is what stays open); the palette opens the
syllabus; the health panel lists its checks; and no console error appears on the way."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

import layerq_nb
from layerq_nb.lab.tutorials import catalogue
from layerq_nb.ui._assets import tutorial

expect.set_options(timeout=30_000)
TOKEN = "layerq-ext-test"


def test_pip_install_put_both_halves_of_the_extension_in_place():
    """What `pip install -e .` installs as shared-data (the same files `jupyter labextension list` and
    `jupyter server extension list` read, without their 20 s of imports): the prebuilt labextension,
    identical to the one the source builds to, and the switch that enables the server extension."""
    from jupyter_core.paths import jupyter_config_path, jupyter_path
    from jupyter_server.extension.config import ExtensionConfigManager

    built = json.loads((Path(layerq_nb.__file__).parent / "labextension" / "package.json").read_text())
    installed = [Path(p) / "layerq-nb" / "package.json" for p in jupyter_path("labextensions")]
    installed = [json.loads(p.read_text()) for p in installed if p.is_file()]
    assert installed, "layerq-nb is not installed: pip install -e . (it ships share/jupyter/labextensions/layerq-nb)"
    assert installed[0]["jupyterlab"]["_build"] == built["jupyterlab"]["_build"], \
        "the installed layerq-nb is not the one in layerq_nb/labextension/: pip install -e . again"
    enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).get_jpserver_extensions()
    assert enabled.get("layerq_nb.lab") is True, enabled


@pytest.fixture(scope="module")
def lab(tmp_path_factory, start_lab):
    root = tmp_path_factory.mktemp("lab-ext")
    yield start_lab(root, root.parent / f"{root.name}-server.log", token=TOKEN), root


def _post(url: str, endpoint: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/layerq/{endpoint}?token={TOKEN}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_rest_handlers_answer_bad_requests_with_their_fix(lab):
    url, root = lab
    status, answer = _post(url, "tutorials/42/open", {})
    assert status == 404 and answer["message"].startswith("no tutorial '42': choose one of 00_tour")
    status, answer = _post(url, "tutorials/00/open", {"folder": "../outside"})
    assert status == 400 and "outside the Jupyter server's root" in answer["message"]
    assert not (root.parent / "outside").exists()
    status, answer = _post(url, "tutorials/01/open", {})          # no folder: the default one
    assert (status, answer) == (200, {"path": "layerq-tutorials/01_gradient_isolation.ipynb", "created": True})
    with urllib.request.urlopen(f"{url}/layerq/tutorials?token={TOKEN}", timeout=10) as answer:
        listed = json.loads(answer.read())
    assert listed["tutorials"] == [t.as_json() for t in catalogue()]


def _menu(page, *labels: str):
    """Open the main menu `labels[0]`, then walk its submenus to the last label and click it."""
    page.locator(".lm-MenuBar-itemLabel", has_text=labels[0]).click()
    for label in labels[1:]:
        item = page.locator(".lm-Menu-content .lm-Menu-item:visible", has_text=label).first
        item.hover()
        item.click()


def test_launcher_cards_open_reset_syllabus_and_health(lab, page, console_errors, tmp_path):
    url, root = lab
    # the settings entry: the learner's copies go to the folder it names (inside the server root)
    setting = urllib.request.Request(
        f"{url}/lab/api/settings/layerq-nb:plugin?token={TOKEN}", method="PUT",
        data=json.dumps({"raw": json.dumps({"tutorialsFolder": "my-course/tutorials"})}).encode())
    urllib.request.urlopen(setting, timeout=10)
    folder = root / "my-course" / "tutorials"
    page.set_default_timeout(60_000)
    page.goto(f"{url}/lab?token={TOKEN}&reset")
    page.wait_for_function("window.jupyterapp && window.jupyterapp.started !== undefined")
    page.evaluate("window.jupyterapp.started")
    # the lab loaded the prebuilt extension and did not disable it
    config = json.loads(page.locator("#jupyter-config-data").text_content())
    assert "layerq-nb" in [e["name"] for e in config["federated_extensions"]]
    assert page.evaluate("window.jupyterapp.isPluginActivated('layerq-nb:plugin')")

    # the launcher: a LayerQ tutorials section, one card per tutorial with its title, line and time
    cards = page.locator(".jp-LauncherCard[data-category='LayerQ tutorials']")
    expect(cards).to_have_count(len(catalogue()))
    tour = catalogue()[0]
    first = cards.filter(has_text=tour.title)
    expect(first).to_contain_text(tour.summary)
    expect(first).to_contain_text(tour.time)
    expect(page.locator(".jp-Launcher-sectionTitle", has_text="LayerQ tutorials")).to_be_visible()
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "launcher.png"), full_page=True)

    # a card opens the learner's copy, created from the package
    first.click()
    copy = folder / f"{tour.name}.ipynb"
    tab = page.locator(".lm-TabBar-tab", has_text=f"{tour.name}.ipynb")
    expect(tab).to_be_visible()
    assert copy.read_bytes() == tutorial(tour.number).read_bytes()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell").first).to_be_visible()

    # the learner adds a cell without saving; reset from the LayerQ menu saves it into the backup first
    notebook.locator(".jp-Cell").first.click()
    page.evaluate("window.jupyterapp.commands.execute('notebook:insert-cell-above')")
    page.evaluate("window.jupyterapp.commands.execute('notebook:enter-edit-mode')")
    page.keyboard.type("MY OWN NOTES")
    expect(notebook.locator(".jp-Cell").first).to_contain_text("MY OWN NOTES")
    assert "MY OWN NOTES" not in copy.read_text()                 # not saved yet
    _menu(page, "LayerQ", "Reset Tutorial to a Clean Copy", f"{tour.number} · {tour.title}")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text(f"Reset tutorial {tour.number}")
    dialog.locator("button", has_text="Reset").click()
    expect(page.locator(".jp-Notification-Toast-success, .Toastify__toast")
           .filter(has_text="is clean again")).to_be_visible()
    backups = list((folder / "backups").glob(f"{tour.name}-*.ipynb"))
    assert len(backups) == 1, backups
    assert "MY OWN NOTES" in backups[0].read_text()
    assert copy.read_bytes() == tutorial(tour.number).read_bytes()
    expect(notebook).not_to_contain_text("MY OWN NOTES")          # the clean copy is what is open
    expect(notebook.locator(".jp-Cell").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "after-reset.png"), full_page=True)

    # the command palette: the syllabus, as a rendered markdown document
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("LayerQ Syllabus")
    page.keyboard.press("Enter")
    expect(page.locator(".jp-RenderedMarkdown h2", has_text="Syllabus").first).to_be_visible()
    assert (folder / "README.md").is_file()

    # the health panel, from the LayerQ menu: every check with its verdict, the stack on both sides
    _menu(page, "LayerQ", "LayerQ Health Check")
    panel = page.get_by_test_id("layerq-health")
    expect(panel.locator(".lq-health-summary")).to_be_visible(timeout=90_000)   # the kernel's Python imports torch
    for name in ("widget front ends (server)", "layerq_nb in the kernel", "device", "memory", "model weights"):
        expect(panel.locator(".lq-health-row", has_text=name)).to_be_visible()
    expect(panel.locator(".lq-health-versions")).to_contain_text("anywidget")
    page.screenshot(path=str(tmp_path / "health.png"), full_page=True)

    assert console_errors == [], console_errors
