/* The job page: a loss chart that grows as points arrive, and a log that follows its tail.
 *
 * The chart asks /jobs/<pk>/metrics/?after=<id> every 2 s for the points it does not have
 * yet, draws them as SVG, and stops once the server answers 286 (the job ended and every
 * point was sent). The log lines themselves arrive through htmx; this only keeps the view
 * at the bottom while the reader is there. No library, no CDN.
 */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 2000;

  function loss_chart(root) {
    const svg = root.querySelector("svg");
    const empty = root.querySelector("[data-chart-empty]");
    const url = root.dataset.url;
    const train = [];
    const evals = [];
    let after = 0;
    let totalSteps = 0;
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
      totalSteps = data.total_steps || totalSteps;
      resumedAt = data.resumed_at_step || 0;
      root.dataset.points = String(train.length + evals.length);
      if (data.points.length) draw();
      if (response.status === 286 || data.final) {
        root.dataset.done = "true";
        if (!train.length && !evals.length && empty) empty.textContent = "This job reported no loss.";
        return;
      }
      setTimeout(tick, POLL_MS);
    }

    function el(name, attrs, text) {
      const node = document.createElementNS(SVG, name);
      for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
      if (text !== undefined) node.textContent = text;
      return node;
    }

    function fmt(value) {
      return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
    }

    function draw() {
      if (empty) empty.style.display = "none";
      svg.style.display = "block";
      const width = 640, height = 260, left = 48, right = 12, top = 12, bottom = 28;
      const all = train.concat(evals);
      const maxStep = Math.max(totalSteps, ...all.map((p) => p[0]), 1);
      let low = Math.min(...all.map((p) => p[1]));
      let high = Math.max(...all.map((p) => p[1]));
      if (high - low < 1e-9) { high += 0.5; low -= 0.5; }
      const pad = (high - low) * 0.08;
      low = Math.max(0, low - pad);
      high += pad;
      const x = (step) => left + (step / maxStep) * (width - left - right);
      const y = (value) => top + (1 - (value - low) / (high - low)) * (height - top - bottom);
      svg.replaceChildren();
      for (let i = 0; i <= 4; i++) {
        const value = low + ((high - low) * i) / 4;
        svg.append(el("line", { class: "grid-line", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
        svg.append(el("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, fmt(value)));
      }
      svg.append(el("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
      svg.append(el("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
      for (const step of [0, Math.round(maxStep / 2), maxStep]) {
        svg.append(el("text", { x: x(step), y: height - 8, "text-anchor": "middle" }, String(step)));
      }
      if (resumedAt > 0) {
        // Where this attempt took over from the earlier one's checkpoint (jobs/_resume.html says so in words).
        svg.append(el("line", { class: "resume-line", x1: x(resumedAt), x2: x(resumedAt), y1: top, y2: height - bottom,
          stroke: "currentColor", "stroke-dasharray": "4 3", "data-resumed-at": resumedAt }));
        svg.append(el("text", { x: x(resumedAt) + 4, y: top + 10 }, "resumed at " + resumedAt));
      }
      const line = (points) => points.slice().sort((a, b) => a[0] - b[0]).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      if (train.length) svg.append(el("polyline", { class: "train", points: line(train), "data-series": "train" }));
      if (evals.length) {
        svg.append(el("polyline", { class: "eval", points: line(evals), "data-series": "eval" }));
        for (const [step, value] of evals) svg.append(el("circle", { class: "eval-dot", cx: x(step), cy: y(value), r: 3 }));
      }
      const last = train[train.length - 1];
      svg.setAttribute("aria-label", `Loss chart: ${train.length} training points${last ? ", last loss " + fmt(last[1]) + " at step " + last[0] : ""}; ${evals.length} evaluation points`);
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
