"""The rendered copy (`layerq course render`) in Chromium with every request outside the local server
refused: the math is typeset by the MathJax served beside the pages, the figures are there, and no
solution text reached the public page."""
from __future__ import annotations

import functools
import html
import http.server
import json
import threading

import pytest
from playwright.sync_api import expect

NOTEBOOK = "06"        # the fastest tutorial (about 17 s in FAST mode), with math, figures and exercises


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from layerq_nb.course.render import render
    folder = tmp_path_factory.mktemp("site")
    rendered = render(folder, notebooks=[NOTEBOOK], fast=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rendered, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_rendered_page_typesets_math_and_shows_figures_offline(site, page, console_errors):
    _, base = site
    refused = []

    def route(route):
        if route.request.url.startswith(base + "/"):
            return route.continue_()
        refused.append(route.request.url)
        return route.abort()
    page.route("**/*", route)
    page.goto(f"{base}/index.html")
    page.get_by_role("link", name="06 · Transfer regret", exact=False).click()
    page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 "
                           "&& document.querySelectorAll('.MathJax, .MathJax_Display').length > 20",
                           timeout=60_000)
    typeset = page.locator(".jp-MarkdownOutput .MathJax").count()
    assert typeset > 20, f"only {typeset} typeset formulas"
    text = page.locator(".jp-MarkdownOutput").all_inner_texts()
    raw = [t for t in text if "$$" in t or "\\delta" in t or "\\frac" in t]
    assert not raw, f"math left raw: {raw[0][:200]}"
    assert page.locator(".MathJax_Error, .mjx-error, [data-mjx-error]").count() == 0
    figures = page.locator(".jp-OutputArea-output img")
    assert figures.count() >= 1
    for i in range(figures.count()):
        assert figures.nth(i).evaluate("img => img.complete && img.naturalWidth > 100"), f"figure {i} is empty"
    expect(page.locator(".jp-OutputArea-output").filter(has_text="Not answered yet").first).to_be_visible()
    assert refused == []                 # everything, MathJax and its fonts included, came from the site
    # MathJax 2's HTML-CSS output probes with an `about:blank` resource, which Chromium reports as an error
    # (with its "Failed to load resource: net::ERR_FAILED"); nothing else may fail
    others = [e for e in console_errors if "about:blank" not in e and e != "Failed to load resource: net::ERR_FAILED"]
    assert not others, console_errors


def test_rendered_copy_has_no_solution_text(site):
    from layerq_nb.exercises.solutions.nb06 import SOLUTIONS
    from layerq_nb.ui._assets import tutorials
    rendered, _ = site
    public = html.unescape(rendered.pages[0].read_text(encoding="utf-8"))
    executed = json.loads((rendered.folder / "notebooks" / rendered.pages[0].with_suffix(".ipynb").name).read_text())
    outputs = json.dumps([c.get("outputs", []) for c in executed["cells"]], ensure_ascii=False)
    given = {line.strip() for cell in json.loads(tutorials()[NOTEBOOK].read_text())["cells"]
             for line in "".join(cell["source"]).split("\n")}
    lines = {line.strip() for code in SOLUTIONS.values() for line in code.split("\n")} - given - {""}
    assert len(lines) > 5
    leaked = [line for line in lines if line in public or line in outputs]
    assert not leaked, leaked
    assert "No solution in this edition" in outputs          # the buttons say so
