/* The job page: a loss chart that grows as points arrive, and a log that follows its tail.
 *
 * The chart asks /jobs/<pk>/metrics/?after=<id> every 2 s for the points it does not have
 * yet, draws them with charts.js (the vendored uPlot), and stops once the server answers 286
 * (the job ended and every point was sent). The log lines themselves arrive through htmx; this
 * only keeps the view at the bottom while the reader is there. No CDN.
 */
(function () {
  "use strict";

  const POLL_MS = 2000;

  function loss_chart(root) {
    const empty = root.querySelector("[data-chart-empty]");
    const url = root.dataset.url;
    const train = [];
    const evals = [];
    const chart = window.LLMTunerCharts.lossChart(root, []);
    let after = 0;
    let resumedAt = 0; // a resumed attempt: the step its checkpoint was at

    async function tick() {
      let response, data;
      try {
        response = await fetch(url + "?after=" + after, {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (response.status !== 200 && response.status !== 286) {
          // Gone (404) or signed out: stop. A server error: try again a little later.
          if (response.status >= 500) setTimeout(tick, POLL_MS * 2);
          return;
        }
        data = await response.json();
      } catch (error) {
        setTimeout(tick, POLL_MS * 2);
        return;
      }
      for (const [, step, loss, evalLoss] of data.points) {
        if (loss !== null) train.push([step, loss]);
        if (evalLoss !== null) evals.push([step, evalLoss]);
      }
      after = data.after;
      resumedAt = data.resumed_at_step || 0;
      root.dataset.points = String(train.length + evals.length);
      if (data.points.length) {
        if (empty) empty.hidden = true;
        // Where this attempt took over from the earlier one's checkpoint (jobs/_resume.html says so in words).
        const markers = resumedAt > 0 ? [{ step: resumedAt, label: "resumed at " + resumedAt, name: "resumed-at" }] : [];
        chart.update(
          [
            { key: "train", label: "training loss", points: train, colour: "#3b5bdb" },
            { key: "eval", label: "evaluation loss", points: evals, colour: "#d9480f", dashed: true },
          ],
          markers,
        );
      }
      if (response.status === 286 || data.final) {
        root.dataset.done = "true";
        if (!train.length && !evals.length && empty) empty.textContent = "This job reported no loss.";
        return;
      }
      setTimeout(tick, POLL_MS);
    }

    tick();
  }

  function follow_log(box) {
    let stick = true;
    box.scrollTop = box.scrollHeight;
    box.addEventListener("scroll", () => {
      stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 24;
    });
    new MutationObserver(() => {
      if (stick) box.scrollTop = box.scrollHeight;
    }).observe(box, { childList: true });
  }

  function start() {
    document.querySelectorAll("[data-loss-chart]").forEach(loss_chart);
    document.querySelectorAll("[data-follow-log]").forEach(follow_log);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
