// A version's numbers drawn: per-class table, confusion matrix heat map, side-by-side
// comparison of two versions, and the loss and accuracy curves (uPlot).
import { el, pct } from "./common.js";

export function perClassTable(table, metrics) {
  table.replaceChildren(
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        ...["Class", "Precision", "Recall", "F1", "Images"].map((h) =>
          el("th", { scope: "col", text: h }),
        ),
      ),
    ),
    el(
      "tbody",
      {},
      ...Object.entries(metrics.per_class).map(([name, m]) =>
        el(
          "tr",
          {},
          el("th", { scope: "row", text: name }),
          el("td", { text: pct(m.precision) }),
          el("td", { text: pct(m.recall) }),
          el("td", { text: pct(m.f1) }),
          el("td", { text: String(m.support) }),
        ),
      ),
    ),
  );
}

// Rows are true classes, columns predicted ones; each cell is a button (onCell(true, pred)).
export function confusionMatrix(table, metrics, onCell) {
  const names = metrics.class_names || Object.keys(metrics.per_class);
  const matrix = metrics.confusion_matrix;
  const head = el(
    "tr",
    {},
    el("th", { scope: "col", text: "true \\ predicted" }),
    ...names.map((n) => el("th", { scope: "col", text: n })),
  );
  const rows = matrix.map((row, t) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return el(
      "tr",
      {},
      el("th", { scope: "row", text: names[t] }),
      ...row.map((count, p) => {
        const share = count / total;
        const button = el("button", {
          type: "button",
          class: `cell ${t === p ? "hit" : "miss"}`,
          "data-true": names[t],
          "data-predicted": names[p],
          "aria-label": `${count} images of ${names[t]} predicted as ${names[p]}`,
          text: String(count),
          onclick: () => onCell(names[t], names[p], button),
        });
        // Colour by the share of the true class's images (CSSOM: allowed by the page's CSP).
        const hue = t === p ? "34, 139, 84" : "200, 60, 50";
        button.style.backgroundColor = `rgba(${hue}, ${count ? 0.12 + 0.88 * share : 0})`;
        if (share > 0.55) button.style.color = "#fff";
        return el("td", {}, button);
      }),
    );
  });
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

// Two versions' validation numbers side by side: accuracy, then each class's F1, precision
// and recall, with the change.
export function compareTable(container, older, newer) {
  const classes = [
    ...new Set([
      ...Object.keys(newer.metrics.per_class || {}),
      ...Object.keys(older.metrics.per_class || {}),
    ]),
  ];
  const delta = (a, b) => {
    if (a === undefined || b === undefined) return el("td", { text: "—" });
    const d = (b - a) * 100;
    return el("td", {
      class: d > 0.05 ? "up" : d < -0.05 ? "down" : "",
      text: `${d > 0 ? "+" : ""}${d.toFixed(1)}`,
    });
  };
  const row = (label, a, b) =>
    el(
      "tr",
      {},
      el("th", { scope: "row", text: label }),
      el("td", { text: pct(a) }),
      el("td", { text: pct(b) }),
      delta(a, b),
    );
  const body = [row("accuracy", older.metrics.accuracy, newer.metrics.accuracy)];
  for (const c of classes) {
    const a = (older.metrics.per_class || {})[c] || {};
    const b = (newer.metrics.per_class || {})[c] || {};
    body.push(row(`${c}: F1`, a.f1, b.f1));
    body.push(row(`${c}: precision`, a.precision, b.precision));
    body.push(row(`${c}: recall`, a.recall, b.recall));
  }
  container.replaceChildren(
    el("h3", { text: `Version ${older.version} against version ${newer.version}` }),
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { class: "compare", "data-older": older.version, "data-newer": newer.version },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { scope: "col", text: "Validation" }),
            el("th", { scope: "col", text: `version ${older.version}` }),
            el("th", { scope: "col", text: `version ${newer.version}` }),
            el("th", { scope: "col", text: "change (points)" }),
          ),
        ),
        el("tbody", {}, ...body),
      ),
    ),
  );
}

// Loss and accuracy against epoch, train and validation; grows with add(). The x axis is
// the epoch over both phases; the first fine-tuning epoch is marked in the legend.
export class Curves {
  constructor(lossEl, accuracyEl) {
    this.history = [];
    this.lossEl = lossEl;
    this.accuracyEl = accuracyEl;
    this.plots = [];
    this.shownAt = {}; // epoch -> Date.now() when its point was drawn
    window.convserveCurves = this; // read by the console's browser tests
    new ResizeObserver(() => this.resize()).observe(lossEl);
  }

  add(entry) {
    this.history = this.history.filter((h) => h.epoch !== entry.epoch);
    this.history.push(entry);
    this.history.sort((a, b) => a.epoch - b.epoch);
    this.draw();
    this.shownAt[entry.epoch] = Date.now();
  }

  series(keys) {
    const xs = this.history.map((h) => h.epoch);
    return [xs, ...keys.map((k) => this.history.map((h) => (k in h ? h[k] : null)))];
  }

  options(title, keys, colors) {
    const width = Math.max(260, this.lossEl.clientWidth || 300);
    return {
      title,
      width,
      height: 220,
      scales: { x: { time: false } },
      axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, {}],
      series: [
        { label: "epoch" },
        ...keys.map((k, i) => ({
          label: k.startsWith("val_") ? "validation" : "train",
          stroke: colors[i],
          width: 2,
          dash: k.startsWith("val_") ? [6, 4] : undefined,
          points: { show: true, size: 6 },
        })),
      ],
    };
  }

  draw() {
    if (!window.uPlot) return; // the vendored script loads deferred; resize() draws later
    const specs = [
      [this.lossEl, "Loss", ["loss", "val_loss"], ["#c0392b", "#e67e22"]],
      [this.accuracyEl, "Accuracy", ["accuracy", "val_accuracy"], ["#1f6fb2", "#27ae60"]],
    ];
    specs.forEach(([target, title, keys, colors], i) => {
      const data = this.series(keys);
      if (this.plots[i]) this.plots[i].setData(data);
      else this.plots[i] = new window.uPlot(this.options(title, keys, colors), data, target);
      target.dataset.points = String(this.history.length);
    });
    const phases = [...new Set(this.history.map((h) => h.phase))];
    this.lossEl.dataset.phases = phases.join(",");
  }

  resize() {
    if (!window.uPlot) return;
    if (!this.plots.length && this.history.length) this.draw();
    const width = Math.max(260, this.lossEl.clientWidth || 300);
    for (const p of this.plots) p.setSize({ width, height: 220 });
  }
}

export function whenUPlot() {
  return new Promise((resolve) => {
    if (window.uPlot) return resolve();
    window.addEventListener("load", () => resolve(), { once: true });
  });
}
