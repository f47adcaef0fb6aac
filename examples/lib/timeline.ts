// A Jepsen-style latency timeline as a standalone SVG: x is the time an operation started (seconds
// since the origin), y its latency (log scale), one mark per operation coloured by outcome and
// shaped by series (a node, a client), with fault windows as shaded, labelled bands behind. Pure:
// no I/O, no dependencies, every piece of text escaped.

export type Outcome = "ok" | "fail" | "unknown";

export interface TimelineOp {
  /** What the mark's shape tells apart: the node or client that ran the operation. */
  series: string;
  startMs: number;
  endMs: number;
  outcome: Outcome;
}

export interface TimelineWindow {
  label: string;
  startMs: number;
  endMs: number;
}

export interface TimelineOptions {
  title?: string;
  /** Time zero of the x axis, in the same clock as the operations (default: the earliest start). */
  originMs?: number;
  width?: number;
  height?: number;
}

export const OUTCOME_COLORS: Record<Outcome, string> = { ok: "#3b75af", fail: "#d62728", unknown: "#f0a030" };
const OUTCOME_LABELS: Record<Outcome, string> = { ok: "ok", fail: "failed", unknown: "unknown (timed out)" };
const SHAPES = ["circle", "square", "triangle", "diamond", "cross"] as const;
type Shape = (typeof SHAPES)[number];

const MARGIN = { left: 70, right: 190, top: 40, bottom: 50 };
/** Latencies below this are drawn on it: a log axis has no zero. */
const MIN_LATENCY_MS = 0.1;

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

const num = (value: number) => (Math.round(value * 10) / 10).toString();

/** A 1-2-5 step giving about `count` ticks over `span`. */
function niceStep(span: number, count: number): number {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].find((m) => m * power >= raw)!;
  return step * power;
}

function formatMs(ms: number): string {
  if (ms >= 1000) return `${ms / 1000} s`;
  return `${ms} ms`;
}

function mark(shape: Shape, x: number, y: number, color: string, attrs: string): string {
  const r = 3;
  // A closed polygon through points given relative to the mark's centre.
  const polygon = (points: [number, number][]) =>
    `<path ${attrs} d="M${points.map(([dx, dy]) => `${num(x + dx)},${num(y + dy)}`).join(" L")} Z" fill="${color}"/>`;
  switch (shape) {
    case "circle":
      return `<circle ${attrs} cx="${num(x)}" cy="${num(y)}" r="${r}" fill="${color}"/>`;
    case "square":
      return `<rect ${attrs} x="${num(x - r)}" y="${num(y - r)}" width="${r * 2}" height="${r * 2}" fill="${color}"/>`;
    case "triangle":
      return polygon([
        [0, -r - 1],
        [r + 1, r],
        [-r - 1, r],
      ]);
    case "diamond":
      return polygon([
        [0, -r - 1],
        [r + 1, 0],
        [0, r + 1],
        [-r - 1, 0],
      ]);
    case "cross": {
      const d = `M${num(x - r)},${num(y - r)} L${num(x + r)},${num(y + r)} M${num(x - r)},${num(y + r)} L${num(x + r)},${num(y - r)}`;
      return `<path ${attrs} d="${d}" stroke="${color}" stroke-width="1.5" fill="none"/>`;
    }
  }
}

export function renderTimeline(ops: readonly TimelineOp[], windows: readonly TimelineWindow[], options: TimelineOptions = {}): string {
  const width = options.width ?? 1000;
  const height = options.height ?? 480;
  const plot = { x: MARGIN.left, y: MARGIN.top, w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - MARGIN.bottom };
  const starts = [...ops.map((op) => op.startMs), ...windows.map((w) => w.startMs)];
  const origin = options.originMs ?? (starts.length ? Math.min(...starts) : 0);
  const lastMs = Math.max(origin + 1000, ...ops.map((op) => op.endMs), ...windows.map((w) => w.endMs));

  const spanS = (lastMs - origin) / 1000;
  const xStep = niceStep(spanS, 10);
  const xMax = Math.ceil(spanS / xStep) * xStep;
  const xOf = (ms: number) => plot.x + (Math.min(Math.max((ms - origin) / 1000, 0), xMax) / xMax) * plot.w;

  const latencies = ops.map((op) => Math.max(op.endMs - op.startMs, MIN_LATENCY_MS));
  const yMinExp = Math.floor(Math.log10(latencies.length ? Math.min(...latencies) : 1));
  const yMaxExp = Math.max(yMinExp + 1, Math.ceil(Math.log10(latencies.length ? Math.max(...latencies) : 1000)));
  const yOf = (ms: number) => plot.y + plot.h - ((Math.log10(Math.max(ms, MIN_LATENCY_MS)) - yMinExp) / (yMaxExp - yMinExp)) * plot.h;

  const series = [...new Set(ops.map((op) => op.series))].sort();
  const shapeOf = new Map(series.map((name, i) => [name, SHAPES[i % SHAPES.length]!]));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="sans-serif" font-size="11">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  if (options.title) {
    out.push(`<text x="${plot.x}" y="${plot.y - 18}" font-size="14" font-weight="bold">${escapeXml(options.title)}</text>`);
  }

  // Fault windows first, so that the operations are drawn over them.
  out.push(`<g class="fault-windows">`);
  for (const window of windows) {
    const x = xOf(window.startMs);
    const w = Math.max(xOf(window.endMs) - x, 1);
    const label = escapeXml(window.label);
    out.push(
      `<g class="fault-window" data-label="${label}">` +
        `<rect x="${num(x)}" y="${plot.y}" width="${num(w)}" height="${plot.h}" fill="#999999" fill-opacity="0.2"/>` +
        `<text x="${num(x + 3)}" y="${plot.y + 12}" fill="#555555">${label}</text></g>`,
    );
  }
  out.push(`</g>`);

  // Axes, grid and ticks.
  out.push(`<g class="axes" stroke="#000000">`);
  out.push(`<line x1="${plot.x}" y1="${plot.y + plot.h}" x2="${plot.x + plot.w}" y2="${plot.y + plot.h}"/>`);
  out.push(`<line x1="${plot.x}" y1="${plot.y}" x2="${plot.x}" y2="${plot.y + plot.h}"/>`);
  out.push(`</g>`);
  out.push(`<g class="ticks">`);
  for (let s = 0; s <= xMax + xStep / 1000; s += xStep) {
    const x = plot.x + (s / xMax) * plot.w;
    const label = Number(s.toFixed(6)).toString();
    out.push(`<line x1="${num(x)}" y1="${plot.y + plot.h}" x2="${num(x)}" y2="${plot.y + plot.h + 5}" stroke="#000000"/>`);
    out.push(`<text x="${num(x)}" y="${plot.y + plot.h + 18}" text-anchor="middle">${label}</text>`);
  }
  for (let exp = yMinExp; exp <= yMaxExp; exp++) {
    const ms = 10 ** exp;
    const y = yOf(ms);
    out.push(`<line x1="${plot.x}" y1="${num(y)}" x2="${plot.x + plot.w}" y2="${num(y)}" stroke="#e0e0e0"/>`);
    out.push(`<line x1="${plot.x - 5}" y1="${num(y)}" x2="${plot.x}" y2="${num(y)}" stroke="#000000"/>`);
    out.push(`<text x="${plot.x - 8}" y="${num(y + 4)}" text-anchor="end">${escapeXml(formatMs(Number(ms.toPrecision(6))))}</text>`);
  }
  out.push(`</g>`);
  out.push(`<text x="${plot.x + plot.w / 2}" y="${height - 12}" text-anchor="middle">time since start (s)</text>`);
  out.push(
    `<text x="16" y="${plot.y + plot.h / 2}" text-anchor="middle" transform="rotate(-90 16 ${plot.y + plot.h / 2})">latency (log)</text>`,
  );

  // Operations: ok first, so failures and unknowns stay visible on top.
  const order: Outcome[] = ["ok", "unknown", "fail"];
  out.push(`<g class="ops" fill-opacity="0.8">`);
  for (const outcome of order) {
    for (const op of ops) {
      if (op.outcome !== outcome) continue;
      const attrs = `class="op op-${outcome}" data-series="${escapeXml(op.series)}"`;
      out.push(mark(shapeOf.get(op.series)!, xOf(op.startMs), yOf(op.endMs - op.startMs), OUTCOME_COLORS[outcome], attrs));
    }
  }
  out.push(`</g>`);

  // Legend: outcomes by colour, series by shape.
  const legendX = plot.x + plot.w + 20;
  let legendY = plot.y + 6;
  out.push(`<g class="legend">`);
  for (const outcome of order) {
    out.push(mark("circle", legendX, legendY, OUTCOME_COLORS[outcome], `class="legend-outcome"`));
    out.push(`<text x="${legendX + 10}" y="${legendY + 4}">${escapeXml(OUTCOME_LABELS[outcome])}</text>`);
    legendY += 16;
  }
  legendY += 8;
  for (const name of series) {
    out.push(mark(shapeOf.get(name)!, legendX, legendY, "#555555", `class="legend-series"`));
    out.push(`<text x="${legendX + 10}" y="${legendY + 4}">${escapeXml(name)}</text>`);
    legendY += 16;
  }
  if (windows.length) {
    legendY += 8;
    out.push(`<rect x="${legendX - 4}" y="${legendY - 5}" width="8" height="10" fill="#999999" fill-opacity="0.4"/>`);
    out.push(`<text x="${legendX + 10}" y="${legendY + 4}">fault active</text>`);
  }
  out.push(`</g>`);
  out.push(`</svg>`);
  return `${out.join("\n")}\n`;
}
