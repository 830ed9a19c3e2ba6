// Water-filling view of MDL allocation program A (seed 003):
//   r_k(nu) = clip(q_k / (nu c_k) - beta_k, lower_k, upper_k)
// Each column is a layer: the grey floor sits at -beta_k, the dashed line is the unclipped level
// q_k/(nu c_k) - beta_k, the blue water is the allocation r_k, the red ticks are the bounds.
// Synced state: q, cost, beta, lower, upper, x (bytes, float32), nu (float), selected (int), label (str).

function floats(dv) {
  if (!dv || !dv.byteLength) return new Float32Array(0);
  return new Float32Array(dv.buffer.slice(dv.byteOffset, dv.byteOffset + dv.byteLength));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

const KEYS = ["q", "cost", "beta", "lower", "upper", "x", "nu", "selected", "label"];

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "lq-waterfill";
  root.dataset.testid = "waterfill";
  const title = document.createElement("div");
  title.className = "lq-title";
  const plot = svg("svg", { class: "lq-plot" });
  const readout = document.createElement("div");
  readout.className = "lq-readout";
  readout.dataset.testid = "waterfill-readout";
  root.append(title, plot, readout);
  el.appendChild(root);

  function draw() {
    const q = floats(model.get("q")), c = floats(model.get("cost")), beta = floats(model.get("beta"));
    const lower = floats(model.get("lower")), upper = floats(model.get("upper")), x = floats(model.get("x"));
    const nu = model.get("nu"), selected = model.get("selected");
    const n = Math.min(q.length, c.length, beta.length, lower.length, upper.length, x.length);
    const level = Array.from({ length: n }, (_, k) => q[k] / (nu * c[k]) - beta[k]);
    let top = 0, bottom = 0;
    for (let k = 0; k < n; k++) {
      top = Math.max(top, x[k], Number.isFinite(upper[k]) ? upper[k] : 0, Number.isFinite(level[k]) ? level[k] : 0);
      bottom = Math.min(bottom, -beta[k], lower[k]);
    }
    top = top > 0 ? top * 1.08 : 1;
    const W = Math.max(320, Math.min(900, 26 * n + 60)), H = 240, left = 44, pad = 10;
    const colW = (W - left - pad) / Math.max(n, 1);
    const y = (v) => pad + (top - v) / (top - bottom) * (H - 2 * pad);
    plot.setAttribute("width", W);
    plot.setAttribute("height", H);
    plot.replaceChildren();
    plot.append(svg("line", { class: "lq-axis", x1: left, x2: W - pad, y1: y(0), y2: y(0) }));
    for (const v of [top / 1.08, bottom]) {
      const t = svg("text", { class: "lq-tick", x: left - 4, y: y(v) + 4, "text-anchor": "end" });
      t.textContent = v.toPrecision(3);
      plot.append(t);
    }
    for (let k = 0; k < n; k++) {
      const x0 = left + k * colW + 2, w = Math.max(colW - 4, 1);
      const g = svg("g", { class: "lq-column" + (k === selected ? " lq-selected" : ""), "data-layer": k });
      g.append(svg("rect", { class: "lq-floor", x: x0, y: y(0), width: w, height: Math.max(y(-beta[k]) - y(0), 0) }));
      const base = Math.max(lower[k], 0);
      g.append(svg("rect", { class: "lq-water", x: x0, y: y(x[k]), width: w, height: Math.max(y(base) - y(x[k]), 0) }));
      if (Number.isFinite(level[k]) && level[k] <= top)
        g.append(svg("line", { class: "lq-level", x1: x0, x2: x0 + w, y1: y(level[k]), y2: y(level[k]) }));
      if (Number.isFinite(upper[k]))
        g.append(svg("line", { class: "lq-bound", x1: x0, x2: x0 + w, y1: y(upper[k]), y2: y(upper[k]) }));
      if (lower[k] > 0)
        g.append(svg("line", { class: "lq-bound", x1: x0, x2: x0 + w, y1: y(lower[k]), y2: y(lower[k]) }));
      g.append(svg("rect", { class: "lq-hit", x: x0 - 2, y: pad, width: colW, height: H - 2 * pad }));  // on top
      g.addEventListener("click", () => { model.set("selected", k); model.save_changes(); });
      plot.append(g);
    }
    let spend = 0;
    for (let k = 0; k < n; k++) spend += c[k] * x[k];
    title.textContent = `${model.get("label") || "allocation"}: nu = ${nu.toPrecision(4)}, spend sum c_k r_k = ${spend.toPrecision(5)}`;
    if (selected >= 0 && selected < n) {
      const k = selected;
      const hi = Number.isFinite(upper[k]) ? upper[k].toPrecision(3) : "inf";
      readout.textContent = `layer ${k}: r = ${x[k].toPrecision(4)}, level q/(nu c) - beta = ${level[k].toPrecision(4)}, ` +
        `bounds [${lower[k].toPrecision(3)}, ${hi}]`;
    } else {
      readout.textContent = "click a column";
    }
  }
  for (const key of KEYS) model.on(`change:${key}`, draw);
  draw();
  return () => { for (const key of KEYS) model.off(`change:${key}`, draw); };
}

export default { render };
