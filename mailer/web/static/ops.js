// The ops console's live progress: while a page shows campaigns (data-poll on <main>), poll the JSON API every
// two seconds and update each campaign's counts, bar, progress and state in place. A change of state (paused,
// finished) reloads the page, whose actions depend on it. Served from the package ('self' under the CSP); no
// inline script, no library, and no markup from the server is ever inserted: only numbers and text nodes.
"use strict";
(function () {
  const main = document.querySelector("main[data-poll]");
  if (!main) return;
  const colours = JSON.parse(document.body.dataset.colours || "{}");
  const SVG = "http://www.w3.org/2000/svg";

  function drawBar(holder, counts) {
    const svg = holder.querySelector("svg");
    if (!svg) return;
    const width = Number(svg.getAttribute("width"));
    const height = Number(svg.getAttribute("height"));
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    while (svg.childNodes.length > 1) svg.removeChild(svg.lastChild);
    let x = 0;
    const order = Object.keys(colours).concat(Object.keys(counts).filter((s) => !(s in colours)).sort());
    for (const status of order) {
      const n = counts[status] || 0;
      if (!n || !total) continue;
      const w = (width * n) / total;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", x.toFixed(2));
      rect.setAttribute("width", w.toFixed(2));
      rect.setAttribute("height", String(height));
      rect.setAttribute("fill", colours[status] || "#666666");
      const title = document.createElementNS(SVG, "title");
      title.textContent = status + ": " + n;
      rect.appendChild(title);
      svg.appendChild(rect);
      x += w;
    }
    svg.setAttribute("aria-label", order.filter((s) => counts[s]).map((s) => s + " " + counts[s]).join(", "));
  }

  function setText(scope, selector, text) {
    const node = scope.querySelector(selector);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function update(campaign) {
    const scope = main.dataset.campaign === String(campaign.id) ? main : main.querySelector('[data-campaign="' + campaign.id + '"]');
    if (!scope) return false;
    if (scope.dataset.state !== campaign.state) return true;
    const counts = campaign.counts || {};
    setText(scope, '[data-field="progress"]', (100 * campaign.progress).toFixed(1) + "%");
    setText(scope, '[data-field="counts"]', Object.keys(counts).filter((s) => counts[s]).map((s) => s + " " + counts[s]).join(", "));
    setText(scope, '[data-field="total"]', String(campaign.total));
    for (const cell of scope.querySelectorAll("[data-count]")) {
      setText(cell.parentNode, '[data-count="' + cell.dataset.count + '"]', String(counts[cell.dataset.count] || 0));
    }
    const bar = scope.querySelector("[data-bar]");
    if (bar) drawBar(bar, counts);
    return false;
  }

  async function poll() {
    try {
      const response = await fetch(main.dataset.poll, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) return;
      const data = await response.json();
      const campaigns = Array.isArray(data) ? data : [data];
      if (campaigns.map(update).some(Boolean)) window.location.reload();
    } catch (error) {
      // A server restart or a dropped connection: the next poll tries again.
    }
  }

  window.setInterval(poll, 2000);
})();
