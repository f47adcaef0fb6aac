// The examples' SVG latency timeline: well-formed XML, one labelled band per fault window inside
// the plot where the window was, one mark per operation with its outcome, all text escaped.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type Outcome, renderTimeline, type TimelineOp } from "../../examples/lib/timeline.js";
import { allElements, parseXml, type XmlElement } from "./xml.js";

const ORIGIN = 1_700_000_000_000;

function ops(): TimelineOp[] {
  const outcomes: Outcome[] = ["ok", "ok", "fail", "ok", "unknown"];
  return Array.from({ length: 60 }, (_, i) => ({
    series: `n${(i % 3) + 1}`,
    startMs: ORIGIN + i * 500,
    endMs: ORIGIN + i * 500 + 2 + (i % 7) * 40 + (outcomes[i % 5] === "unknown" ? 2000 : 0),
    outcome: outcomes[i % 5]!,
  }));
}

const byClass = (root: XmlElement, name: string) => allElements(root).filter((e) => e.attrs.class?.split(" ").includes(name));

describe("renderTimeline", () => {
  test("is well-formed XML with an svg root", () => {
    const svg = parseXml(renderTimeline(ops(), [], { title: "t" }));
    assert.equal(svg.name, "svg");
    assert.equal(svg.attrs.xmlns, "http://www.w3.org/2000/svg");
  });

  test("the checker itself rejects what is not well-formed", () => {
    for (const bad of ["<a><b></a>", "<a x=1/>", '<a x="1" x="2"/>', "<a>1 < 2</a>", "<a>&nbsp;</a>", "<a/><b/>", "<a>", "x<a/>"]) {
      assert.throws(() => parseXml(bad), Error, bad);
    }
  });

  test("each fault window is a labelled band inside the plot, where and as long as the window was", () => {
    const windows = [
      { label: "partition n1 | n2 n3", startMs: ORIGIN + 5_000, endMs: ORIGIN + 15_000 },
      { label: "pause", startMs: ORIGIN + 20_000, endMs: ORIGIN + 22_000 },
    ];
    const svg = parseXml(renderTimeline(ops(), windows, { originMs: ORIGIN, width: 1000 }));
    const bands = byClass(svg, "fault-window");
    assert.deepEqual(
      bands.map((band) => band.attrs["data-label"]),
      windows.map((w) => w.label),
    );
    const axis = allElements(byClass(svg, "axes")[0]!).filter((e) => e.name === "line");
    const plotLeft = Math.min(...axis.map((line) => Number(line.attrs.x1)));
    const plotRight = Math.max(...axis.map((line) => Number(line.attrs.x2)));
    const rects = bands.map((band) => band.children.find((child) => child.name === "rect")!);
    for (const [i, rect] of rects.entries()) {
      const x = Number(rect.attrs.x);
      const w = Number(rect.attrs.width);
      assert.ok(x >= plotLeft && x + w <= plotRight, `band ${i} at ${x}+${w} outside ${plotLeft}..${plotRight}`);
      assert.equal(bands[i]!.children.find((child) => child.name === "text")?.text, windows[i]!.label);
    }
    // The first window is 10 s long and the second 2 s: widths keep that ratio, and order.
    const [first, second] = rects.map((rect) => ({ x: Number(rect.attrs.x), w: Number(rect.attrs.width) }));
    assert.ok(Math.abs(first!.w / second!.w - 5) < 0.05, `${first!.w} / ${second!.w}`);
    assert.ok(first!.x + first!.w < second!.x);
  });

  test("one mark per operation, coloured by outcome, and every outcome and series in the legend", () => {
    const input = ops();
    const svg = parseXml(renderTimeline(input, []));
    for (const outcome of ["ok", "fail", "unknown"] as const) {
      const marks = byClass(svg, `op-${outcome}`);
      assert.equal(marks.length, input.filter((op) => op.outcome === outcome).length, outcome);
      assert.ok(marks.every((m) => m.attrs.fill === marks[0]!.attrs.fill || m.attrs.stroke === marks[0]!.attrs.stroke));
    }
    const legend = allElements(byClass(svg, "legend")[0]!)
      .filter((e) => e.name === "text")
      .map((e) => e.text);
    for (const label of ["ok", "failed", "unknown (timed out)", "n1", "n2", "n3"]) assert.ok(legend.includes(label), label);
  });

  test("escapes text from operations, windows and the title", () => {
    const nasty = `<script>&"'`;
    const text = renderTimeline([{ series: nasty, startMs: 0, endMs: 5, outcome: "ok" }], [{ label: nasty, startMs: 1, endMs: 2 }], {
      title: nasty,
    });
    assert.ok(!text.includes("<script>"));
    const svg = parseXml(text);
    assert.equal(byClass(svg, "fault-window")[0]!.attrs["data-label"], nasty);
    assert.equal(byClass(svg, "op")[0]!.attrs["data-series"], nasty);
  });

  test("empty input still draws axes", () => {
    const svg = parseXml(renderTimeline([], []));
    assert.equal(byClass(svg, "axes").length, 1);
    assert.equal(byClass(svg, "op").length, 0);
  });
});
