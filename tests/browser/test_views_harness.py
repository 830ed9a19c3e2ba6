"""Each ES module in widgets/ rendered by a plain page with a fake anywidget model: offline (every
request is served from the repository or refused), no console errors, and interaction redraws."""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

WIDGETS = Path(__file__).resolve().parents[2] / "widgets"
ORIGIN = "http://harness.test"

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>harness</title></head><body>
<div id="root"></div>
<script type="module">
  const f32 = (values) => new DataView(new Float32Array(values).buffer);
  const u8 = (values) => new DataView(new Uint8Array(values).buffer);
  function fakeModel(state) {
    const listeners = {};
    return {
      get: (k) => state[k],
      set: (k, v) => { state[k] = v; (listeners["change:" + k] || []).forEach((f) => f()); },
      save_changes: () => { window.saved = (window.saved || 0) + 1; },
      on: (e, f) => { (listeners[e] = listeners[e] || []).push(f); },
      off: (e, f) => { listeners[e] = (listeners[e] || []).filter((g) => g !== f); },
      send: () => {},
    };
  }
  window.models = {};
  const views = {
    layer_stack: { names: ["layers.0", "layers.1", "layers.2", "layers.3"], values: f32([0.1, 0.4, 0.2, 0.3]),
                   marked: u8([0, 1, 0, 0]), selected: 0, label: "zeta^2" },
    waterfill: { q: f32([0.1, 0.2, 0.3, 0.4]), cost: f32([1, 1, 1, 1]), beta: f32([1, 1, 1, 1]),
                 lower: f32([0, 0, 0, 0]), upper: f32([3, 3, 3, Infinity]), x: f32([0, 1, 2, 3]), nu: 0.1,
                 selected: -1, label: "allocation" },
    mask_heatmap: { data: f32([1, 0, 0.5, 1, 0, 1]), rows: 2, cols: 3, label: "mask" },
  };
  for (const [name, state] of Object.entries(views)) {
    const css = document.createElement("link");
    css.rel = "stylesheet"; css.href = `/${name}.css`;
    document.head.append(css);
    const el = document.createElement("div");
    el.id = name;
    document.getElementById("root").append(el);
    const module = await import(`/${name}.js`);
    window.models[name] = fakeModel(state);
    module.default.render({ model: window.models[name], el });
  }
  window.ready = true;
</script></body></html>"""


def _serve(page, outside):
    def handle(route):
        url = route.request.url
        if not url.startswith(ORIGIN):
            outside.append(url)
            return route.abort()
        name = url[len(ORIGIN) + 1:] or "index.html"
        if name == "index.html":
            return route.fulfill(body=PAGE, content_type="text/html")
        path = WIDGETS / name
        if not path.is_file():
            return route.fulfill(status=404, body="")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return route.fulfill(body=path.read_text(), content_type=kind)
    page.route("**/*", handle)


def test_views_render_offline_and_react(page, console_errors, tmp_path):
    outside = []
    _serve(page, outside)
    page.goto(f"{ORIGIN}/index.html")
    page.wait_for_function("window.ready === true", timeout=10_000)
    for testid in ("layer-stack", "waterfill", "mask-heatmap"):
        expect(page.get_by_test_id(testid)).to_be_visible()

    # layer stack: a click selects (synced back through save_changes), the arrow keys move the selection
    readout = page.get_by_test_id("layer-stack-readout")
    expect(readout).to_contain_text("layer 0")
    page.locator(".lq-layer-stack .lq-row[data-layer='2'] .lq-hit").click()
    expect(readout).to_contain_text("layer 2 (layers.2)")
    assert page.evaluate("window.models.layer_stack.get('selected')") == 2
    assert page.evaluate("window.saved") >= 1
    page.get_by_test_id("layer-stack").press("ArrowUp")
    expect(readout).to_contain_text("layer 3")
    assert page.locator(".lq-layer-stack .lq-bar.lq-marked").count() == 1

    # water-filling: four columns, one per layer; a new nu and allocation redraw the title and the water
    assert page.locator(".lq-waterfill .lq-column").count() == 4
    title = page.locator(".lq-waterfill .lq-title")
    expect(title).to_contain_text("nu = 0.1000")
    page.locator(".lq-waterfill .lq-column[data-layer='1'] .lq-hit").click()
    expect(page.get_by_test_id("waterfill-readout")).to_contain_text("layer 1: r = 1.000")
    page.evaluate("""() => { const m = window.models.waterfill;
        m.set('x', new DataView(new Float32Array([0.5, 1.5, 2.5, 3.5]).buffer)); m.set('nu', 0.05); }""")
    expect(title).to_contain_text("nu = 0.05000")
    expect(title).to_contain_text("8.000")          # spend sum c_k r_k = 0.5 + 1.5 + 2.5 + 3.5

    # mask heatmap: pruned share from the float32 cells, redrawn on new data
    heat_title = page.locator(".lq-mask-heatmap .lq-title")
    expect(heat_title).to_contain_text("41.7% pruned")
    page.evaluate("""() => { const m = window.models.mask_heatmap;
        m.set('data', new DataView(new Float32Array([1, 1, 1, 1]).buffer)); m.set('rows', 2); m.set('cols', 2); }""")
    expect(heat_title).to_contain_text("0.0% pruned")
    page.locator(".lq-mask-heatmap canvas").hover()
    expect(page.get_by_test_id("mask-heatmap-readout")).to_contain_text("kept")

    page.screenshot(path=str(tmp_path / "harness.png"), full_page=True)
    assert outside == [], f"the views fetched from outside the page: {outside}"
    assert console_errors == []
