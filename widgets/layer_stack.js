// Layer stack: one bar per transformer layer (layer 0 at the bottom), click or arrow keys to select.
// Synced state: names (list of str), values (bytes, float32), selected (int), label (str),
// marked (bytes, uint8: layers drawn with an outline, e.g. cornerstone layers).
// No imports: this file is the whole view (anywidget loads one ES module, offline).

/** @param {DataView | null} dv */
function floats(dv) {
  if (!dv || !dv.byteLength) return new Float32Array(0);
  return new Float32Array(dv.buffer.slice(dv.byteOffset, dv.byteOffset + dv.byteLength));
}

/** @param {DataView | null} dv */
function bytes(dv) {
  if (!dv || !dv.byteLength) return new Uint8Array(0);
  return new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "lq-layer-stack";
  root.dataset.testid = "layer-stack";
  root.tabIndex = 0;
  const title = document.createElement("div");
  title.className = "lq-title";
  const readout = document.createElement("div");
  readout.className = "lq-readout";
  readout.dataset.testid = "layer-stack-readout";
  const canvas = svg("svg", { class: "lq-bars" });
  root.append(title, canvas, readout);
  el.appendChild(root);

  function draw() {
    const names = model.get("names") || [];
    const values = floats(model.get("values"));
    const marked = bytes(model.get("marked"));
    const selected = model.get("selected");
    const n = Math.min(names.length, values.length);
    const rowH = n > 24 ? 12 : 18, labelW = 70, barW = 260, width = labelW + barW + 60;
    canvas.setAttribute("width", width);
    canvas.setAttribute("height", n * rowH + 4);
    canvas.replaceChildren();
    let max = 0;
    for (let i = 0; i < n; i++) if (Number.isFinite(values[i])) max = Math.max(max, Math.abs(values[i]));
    title.textContent = model.get("label") || "";
    for (let i = 0; i < n; i++) {
      const y = (n - 1 - i) * rowH + 2;   // layer 0 at the bottom, like the residual stream
      const v = values[i];
      const w = max > 0 && Number.isFinite(v) ? (Math.abs(v) / max) * barW : 0;
      const row = svg("g", { class: "lq-row" + (i === selected ? " lq-selected" : ""), "data-layer": i });
      const text = svg("text", { x: labelW - 6, y: y + rowH * 0.75, "text-anchor": "end", class: "lq-name" });
      text.textContent = String(i);
      const bar = svg("rect", { class: "lq-bar" + (v < 0 ? " lq-negative" : "") + (marked[i] ? " lq-marked" : ""),
                                x: labelW, y: y + 1, width: Math.max(w, 0.5), height: rowH - 2 });
      row.append(text, bar, svg("rect", { class: "lq-hit", x: 0, y, width, height: rowH }));  // on top: takes the clicks
      row.addEventListener("click", () => select(i));
      canvas.append(row);
    }
    if (selected >= 0 && selected < n) {
      const v = values[selected];
      readout.textContent = `layer ${selected} (${names[selected]}): ${Number.isFinite(v) ? v.toPrecision(4) : "n/a"}`;
    } else {
      readout.textContent = "click a layer";
    }
  }

  function select(i) {
    const n = (model.get("names") || []).length;
    if (n === 0) return;
    model.set("selected", Math.max(0, Math.min(n - 1, i)));
    model.save_changes();
  }

  root.addEventListener("keydown", (event) => {
    const step = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1 }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    select(model.get("selected") + step);
  });

  for (const key of ["names", "values", "selected", "label", "marked"]) model.on(`change:${key}`, draw);
  draw();
  return () => { for (const key of ["names", "values", "selected", "label", "marked"]) model.off(`change:${key}`, draw); };
}

export default { render };
