// A small hand-written SVG line chart: holdout loss per model version. No library, no canvas, so it
// scales with the page, follows the stylesheet's colours, and carries a text alternative.

const SVG = "http://www.w3.org/2000/svg";
const PAD = { left: 52, right: 16, top: 14, bottom: 34 };
const drawn = new WeakMap(); // container → its latest points, redrawn when the container resizes
const observer = typeof ResizeObserver === "undefined" ? null : new ResizeObserver((entries) => {
  for (const entry of entries) {
    const last = drawn.get(entry.target);
    if (last && Math.abs(entry.contentRect.width - last.width) > 1) lossChart(entry.target, last.points, last.options);
  }
});

function node(tag, attrs = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// Round tick values: about `count` of them spanning [lo, hi].
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

// points: [{x: version, y: loss}], sorted by x. Drawn in the container's own pixel size, so text
// stays legible from a phone to a wide screen.
export function lossChart(container, points, options = {}) {
  const { label = "Holdout loss by model version" } = options;
  const WIDTH = Math.max(280, Math.round(container.clientWidth || 640));
  const HEIGHT = Math.round(Math.min(320, Math.max(200, WIDTH * 0.42)));
  if (!drawn.has(container) && observer) observer.observe(container);
  drawn.set(container, { points, options, width: WIDTH });
  const svg = node("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    width: WIDTH,
    height: HEIGHT,
    class: "chart",
    role: "img",
    "aria-labelledby": "chart-svg-title",
  });
  const description =
    points.length === 0
      ? `${label}: no version has been evaluated yet.`
      : `${label}: ${points.length} version${points.length === 1 ? "" : "s"}, from ${points[0].y.toFixed(3)} ` +
        `at version ${points[0].x} to ${points.at(-1).y.toFixed(3)} at version ${points.at(-1).x}.`;
  svg.append(node("title", { id: "chart-svg-title" }, description));
  container.dataset.points = String(points.length);
  container.replaceChildren(svg);
  if (points.length === 0) {
    svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, "Waiting for the first evaluation…"));
    return;
  }
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  const margin = (y1 - y0) * 0.08 || Math.abs(y0) * 0.05 || 1;
  y0 -= margin;
  y1 += margin;
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
  const sy = (y) => HEIGHT - PAD.bottom - ((y - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);

  const grid = node("g", { "aria-hidden": "true" });
  for (const t of ticks(y0, y1, 5)) {
    grid.append(node("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: sy(t), y2: sy(t), class: "grid" }));
    grid.append(node("text", { x: PAD.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "axis" }, t.toFixed(2)));
  }
  for (const t of ticks(x0, x1, Math.max(2, Math.floor(WIDTH / 90))).filter((v) => Number.isInteger(v))) {
    grid.append(node("text", { x: sx(t), y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle", class: "axis" }, String(t)));
  }
  grid.append(node("text", { x: (PAD.left + WIDTH - PAD.right) / 2, y: HEIGHT - 4, "text-anchor": "middle", class: "axis" }, "model version"));
  svg.append(grid);

  const path = points.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
  svg.append(node("path", { d: path, class: "line", "aria-hidden": "true" }));
  if (points.length <= 80) {
    const dots = node("g", { "aria-hidden": "true" });
    for (const p of points) {
      const dot = node("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, class: "dot" });
      dot.append(node("title", {}, `version ${p.x}: ${p.y.toFixed(4)}`));
      dots.append(dot);
    }
    svg.append(dots);
  }
}
