// Mask heatmap: the kept (1) / pruned (0) pattern of one weight matrix, pooled to at most a few hundred
// cells per side in Python (each cell = the fraction of weights kept there).
// Synced state: data (bytes, float32, row-major rows x cols), rows, cols (int), label (str).

function floats(dv) {
  if (!dv || !dv.byteLength) return new Float32Array(0);
  return new Float32Array(dv.buffer.slice(dv.byteOffset, dv.byteOffset + dv.byteLength));
}

const KEYS = ["data", "rows", "cols", "label"];

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "lq-mask-heatmap";
  root.dataset.testid = "mask-heatmap";
  const title = document.createElement("div");
  title.className = "lq-title";
  const canvas = document.createElement("canvas");
  const readout = document.createElement("div");
  readout.className = "lq-readout";
  readout.dataset.testid = "mask-heatmap-readout";
  root.append(title, canvas, readout);
  el.appendChild(root);
  let cells = new Float32Array(0), rows = 0, cols = 0, scale = 1;

  function draw() {
    cells = floats(model.get("data"));
    rows = model.get("rows");
    cols = model.get("cols");
    if (cells.length !== rows * cols) { rows = 0; cols = 0; }
    scale = Math.max(1, Math.floor(360 / Math.max(rows, cols, 1)));
    canvas.width = Math.max(cols * scale, 1);
    canvas.height = Math.max(rows * scale, 1);
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(cols || 1, rows || 1);
    let kept = 0;
    for (let i = 0; i < rows * cols; i++) {
      const v = Math.max(0, Math.min(1, cells[i]));
      kept += v;
      const shade = Math.round(255 * (1 - v));           // kept = dark, pruned = white
      image.data.set([shade, shade, Math.round(255 - 120 * v), 255], 4 * i);
    }
    const off = document.createElement("canvas");
    off.width = cols || 1;
    off.height = rows || 1;
    off.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    const frac = rows * cols ? kept / (rows * cols) : 0;
    title.textContent = `${model.get("label") || "mask"}: ${(100 * (1 - frac)).toFixed(1)}% pruned`;
    readout.textContent = "hover for a cell";
  }

  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - box.left) / scale), r = Math.floor((event.clientY - box.top) / scale);
    if (r >= 0 && r < rows && c >= 0 && c < cols)
      readout.textContent = `cell (${r}, ${c}): ${(100 * cells[r * cols + c]).toFixed(0)}% kept`;
  });
  for (const key of KEYS) model.on(`change:${key}`, draw);
  draw();
  return () => { for (const key of KEYS) model.off(`change:${key}`, draw); };
}

export default { render };
