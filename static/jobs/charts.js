/* Loss charts drawn with the vendored uPlot (static/vendor/uplot): the job page's and the
 * compare page's. One function, so both pages look and behave alike.
 *
 * lossChart(root, series) draws into root's [data-chart-canvas] and returns an object with
 * update(series, markers); a marker {step, label, name} is a dashed vertical line with its
 * label, a DOM element over the canvas carrying data-<name>="<step>". A series is {label, points: [[step, value], ...], colour, dashed}; points
 * need not share steps (uPlot.join aligns them) and gaps are spanned. root gets
 * data-series (the labels drawn, space-separated) and data-drawn (how many points).
 */
(function () {
  "use strict";

  const PALETTE = ["#3b5bdb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0b7285", "#c2255c", "#5c940d"];
  const HEIGHT = 260;

  function columns(series) {
    const tables = series.map((s) => {
      const sorted = s.points.slice().sort((a, b) => a[0] - b[0]);
      return [sorted.map((p) => p[0]), sorted.map((p) => p[1])];
    });
    return uPlot.join(tables);
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(4);
  }

  function lossChart(root, series) {
    const target = root.querySelector("[data-chart-canvas]") || root;
    let plot = null;
    let labels = "";
    let marks = [];

    function placeMarkers(u) {
      for (const node of u.over.querySelectorAll(".chart-marker")) node.remove();
      for (const mark of marks) {
        const node = document.createElement("div");
        node.className = "chart-marker";
        node.dataset[mark.name.replace(/-(\w)/g, (m, c) => c.toUpperCase())] = String(mark.step);
        node.textContent = mark.label;
        node.style.left = u.valToPos(mark.step, "x") + "px";
        u.over.append(node);
      }
    }

    function options(list) {
      return {
        width: Math.max(target.clientWidth, 280),
        height: HEIGHT,
        scales: { x: { time: false } },
        cursor: { drag: { x: true, y: false } },
        hooks: { draw: [placeMarkers] },
        legend: { live: true },
        axes: [
          { label: "step", size: 40 },
          { label: "loss", size: 56, values: (u, ticks) => ticks.map((v) => String(Number(v.toPrecision(3)))) },
        ],
        series: [
          { label: "step", value: (u, v) => (v === null ? "–" : String(v)) },
          ...list.map((s, i) => ({
            label: s.label,
            stroke: s.colour || PALETTE[i % PALETTE.length],
            width: 2,
            dash: s.dashed ? [6, 4] : undefined,
            spanGaps: true,
            points: { show: s.points.length < 40, size: 5 },
            value: (u, v) => fmt(v),
          })),
        ],
      };
    }

    function update(list, markers) {
      marks = markers || [];
      const drawn = list.filter((s) => s.points.length);
      root.dataset.drawn = String(drawn.reduce((n, s) => n + s.points.length, 0));
      if (!drawn.length) return;
      const names = drawn.map((s) => s.label).join("\n");
      if (plot && names === labels) {
        plot.setData(columns(drawn));
        placeMarkers(plot);
      } else {
        if (plot) plot.destroy();
        labels = names;
        plot = new uPlot(options(drawn), columns(drawn), target);
      }
      root.dataset.series = drawn.map((s) => s.key || s.label).join(" ");
    }

    new ResizeObserver(() => {
      if (plot) plot.setSize({ width: Math.max(target.clientWidth, 280), height: HEIGHT });
    }).observe(target);

    update(series || []);
    return { update };
  }

  window.LLMTunerCharts = { lossChart, PALETTE };
})();
