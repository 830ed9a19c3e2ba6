"""JupyterLab end to end: a real server on 127.0.0.1, a notebook that shows every custom view, run
in chromium. Checks each view renders inside an output area, that clicking and sliders change what
is drawn (and reach the kernel), and that no widget failed to load and no console error appeared."""
from __future__ import annotations

import nbformat
import pytest
from playwright.sync_api import expect

expect.set_options(timeout=30_000)     # a kernel start and the first import take seconds on 2 cores

CELLS = [
    "import numpy as np\nimport ipywidgets as W\nfrom layerq_nb.ui import LayerStack, Allocation, MaskHeatmap",
    # the layer stack, and a label the kernel updates when the selection changes
    "stack = LayerStack([f'layers.{i}' for i in range(6)], np.linspace(0.1, 0.6, 6), label='zeta^2')\n"
    "seen = W.Label('kernel: nothing selected yet')\n"
    "stack.observe(lambda c: setattr(seen, 'value', f\"kernel: layer {c['new']} selected\"), names='selected')\n"
    "W.VBox([stack, seen])",
    # the allocation stepper with its water-filling view
    "alloc = Allocation(np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3]), budget=12.0, upper=4.0, with_reference=False)\n"
    "alloc",
    # a mask heatmap driven by a sparsity slider
    "weight = np.random.default_rng(0).normal(size=(64, 96))\n"
    "heat = MaskHeatmap(np.abs(weight) < np.quantile(np.abs(weight), 0.5), label='|W| mask')\n"
    "level = W.FloatSlider(0.5, min=0.0, max=0.9, step=0.05, description='sparsity')\n"
    "level.observe(lambda c: heat.show(np.abs(weight) < np.quantile(np.abs(weight), c['new'])), names='value')\n"
    "W.VBox([level, heat])",
]
# the pruning stepper on the tiny model (seconds on a CPU): four steps, the last one prunes and restores
PRUNING_CELLS = [
    "import layerq_nb as lq\nfrom layerq_nb.ui import Pruning\n"
    "model, tokenizer = lq.load_model('tiny-llama', device='cpu')\n"
    "calibration = lq.load_task('prose', tokenizer, split='train', n_blocks=2, block_size=24)\n"
    "test = lq.load_task('prose', tokenizer, split='test', n_blocks=2, block_size=24)",
    "pruning = Pruning(model, calibration, test, sparsity=0.5)\npruning",
]
TOKEN = "layerq-test"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, start_lab):
    root = tmp_path_factory.mktemp("lab")
    for name, cells in (("views.ipynb", CELLS), ("pruning.ipynb", PRUNING_CELLS)):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, root / name)
    yield start_lab(root, root / "server.log", token=TOKEN), root


def _assert_every_widget_displayed(page, console_errors):
    body = page.locator("body")
    expect(body).not_to_contain_text("Error displaying widget")
    expect(body).not_to_contain_text("Failed to load model class")
    assert console_errors == [], console_errors


def _type_into_slider(page, description: str, value: str):
    """Set an ipywidgets slider the way a person can: type into its editable readout, press Enter."""
    page.locator(".widget-slider", has_text=description).locator(".widget-readout").click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def _open_and_run(page, url: str, notebook: str):
    page.set_default_timeout(90_000)
    page.goto(f"{url}/lab/tree/{notebook}?token={TOKEN}&reset")
    page.wait_for_function("window.jupyterapp && window.jupyterapp.started !== undefined")
    page.evaluate("window.jupyterapp.started")
    page.locator(".jp-Notebook").first.wait_for()
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)   # the kernel is up
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def test_views_render_and_react_in_jupyterlab(lab, page, console_errors, tmp_path):
    url, root = lab
    _open_and_run(page, url, "views.ipynb")
    page.screenshot(path=str(tmp_path / "lab-started.png"), full_page=True)

    outputs = page.locator(".jp-OutputArea-output")
    for testid in ("layer-stack", "waterfill", "mask-heatmap"):
        expect(outputs.get_by_test_id(testid).first).to_be_visible(timeout=60_000)
    expect(outputs.locator("img").first).to_be_visible()      # the stepper's matplotlib figure, as a PNG
    page.screenshot(path=str(tmp_path / "lab-rendered.png"), full_page=True)

    # click a layer: the view redraws, and the kernel hears about it
    stack = outputs.get_by_test_id("layer-stack").first       # the Allocation stepper shows a second one
    stack.locator(".lq-row[data-layer='4'] .lq-hit").click()
    expect(stack.get_by_test_id("layer-stack-readout")).to_contain_text("layer 4 (layers.4)")
    expect(page.get_by_text("kernel: layer 4 selected")).to_be_visible()

    # move the budget slider (type into its readout): the kernel re-solves, the water level moves
    title = page.locator(".lq-waterfill .lq-title")
    expect(title).to_contain_text("sum c_k r_k = 12.000")
    _type_into_slider(page, "budget B", "20")
    expect(title).to_contain_text("sum c_k r_k = 20.000")

    # the sparsity slider re-masks the matrix
    heat_title = page.locator(".lq-mask-heatmap .lq-title")
    expect(heat_title).to_contain_text("50.0% pruned")
    _type_into_slider(page, "sparsity", "0.8")
    expect(heat_title).to_contain_text("80.0% pruned")
    page.screenshot(path=str(tmp_path / "lab-after.png"), full_page=True)

    _assert_every_widget_displayed(page, console_errors)


def test_pruning_stepper_steps_through_in_jupyterlab(lab, page, console_errors, tmp_path):
    """Next x3 (the last arrival prunes, measures and restores), then Evaluate: every step's title, text and
    figure appear, the views it uses render, and nothing fails to display."""
    url, root = lab
    _open_and_run(page, url, "pruning.ipynb")
    stepper = page.locator(".jp-OutputArea-output .lq-pruning")
    expect(stepper).to_be_visible(timeout=180_000)          # kernel start, imports, the tiny model, K-FAC, cvxpy
    title = stepper.locator(".widget-html", has_text="Step ").first
    figure = stepper.locator(".widget-output img")
    next_button = stepper.locator("button", has_text="Next")

    expect(title).to_contain_text("Step 1 of 4: Program B")
    expect(stepper).to_contain_text("s_k(nu) = clip(1 - q_k / (nu n_k), lo, hi)")
    expect(stepper).to_contain_text("status optimal")
    expect(figure).to_be_visible()
    expect(stepper.get_by_test_id("layer-stack")).to_contain_text("program B")
    _type_into_slider(page, "bisection", "3")                 # the bisection slider moves the bracket
    expect(stepper).to_contain_text("Bisection step 4 of")
    page.screenshot(path=str(tmp_path / "pruning-1.png"), full_page=True)

    next_button.click()
    expect(title).to_contain_text("Step 2 of 4: The per-layer sparsity map")
    expect(stepper).to_contain_text("Global sparsity sum_k n_k s_k / sum_k n_k = 0.500000000")
    expect(stepper.get_by_test_id("layer-stack")).to_contain_text("mdl map")
    expect(figure).to_be_visible()

    next_button.click()
    expect(title).to_contain_text("Step 3 of 4: The mask of one matrix")
    heat = stepper.get_by_test_id("mask-heatmap")
    expect(heat).to_be_visible()
    expect(heat.locator(".lq-title")).to_contain_text("wanda")
    expect(figure).to_be_visible()
    page.screenshot(path=str(tmp_path / "pruning-3.png"), full_page=True)

    next_button.click()                                       # arriving prunes, measures, restores
    expect(title).to_contain_text("Step 4 of 4: Perplexity")
    expect(stepper).to_contain_text("Weights restored", timeout=180_000)
    expect(figure).to_be_visible()
    stepper.locator("button", has_text="Evaluate").click()      # again, by the button
    expect(stepper).to_contain_text("2. mdl / wanda @ 50%: perplexity", timeout=180_000)
    expect(stepper).to_contain_text("weights restored")
    page.screenshot(path=str(tmp_path / "pruning-4.png"), full_page=True)

    _assert_every_widget_displayed(page, console_errors)
