/* The compare page: every job's training loss (solid) and evaluation loss (dashed, same colour),
 * from the page's own JSON block, drawn once with charts.js. */
(function () {
  "use strict";

  function start() {
    const root = document.querySelector("[data-compare-chart]");
    const data = document.getElementById("compare-series");
    if (!root || !data) return;
    const palette = window.LLMTunerCharts.PALETTE;
    const series = JSON.parse(data.textContent).map((s) => ({
      key: s.kind + "-" + s.job,
      label: s.label,
      points: s.points,
      colour: palette[s.index % palette.length],
      dashed: s.kind === "eval",
    }));
    window.LLMTunerCharts.lossChart(root, series);
    root.dataset.points = String(series.reduce((n, s) => n + s.points.length, 0));
    root.dataset.done = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
