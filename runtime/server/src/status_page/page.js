
"use strict";
// Refreshes the page from /v1/status every few seconds and redraws the chart. Every value is
// set as text (never as HTML): it may come from tenants. Mirrors html.rs.
(function () {
  const EVERY_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = JSON.parse(document.getElementById("palette").textContent);
  const CHART = { width: 800, height: 220, left: 52, right: 10, top: 12, bottom: 28 };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function time(iso) {
    if (!iso) return "never";
    return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "none due";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const s = Math.floor(seconds);
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function cell(row, cls, text) {
    row.appendChild(el("td", cls, text));
  }

  function publishers(view) {
    const body = el("tbody");
    for (const p of view.publishers) {
      const row = el("tr");
      row.appendChild(el("td", "mono", p.name));
      const kind = el("td", null, p.kind);
      kind.appendChild(el("span", "detail", p.runs));
      row.appendChild(kind);
      const health = el("td", "health " + p.health.replace(" ", "-"), p.health);
      health.appendChild(el("span", "detail", p.health_detail));
      row.appendChild(health);
      cell(row, "num", p.pending);
      cell(row, "num", p.retrying);
      cell(row, "num", p.in_flight);
      cell(row, "num", age(p.oldest_due_seconds));
      cell(row, "num", p.published);
      cell(row, "num", p.retried);
      cell(row, "num", p.failed);
      body.appendChild(row);
    }
    document.querySelector("#publishers tbody").replaceWith(body);
    document.querySelector("#omitted-count").textContent = view.publishers_omitted;
    document.querySelector("#omitted").hidden = !view.publishers_omitted;
  }

  function failed(view) {
    const body = el("tbody");
    if (view.failed_events.length === 0) {
      const row = el("tr");
      const none = el("td", "empty", "no failed events");
      none.colSpan = 6;
      row.appendChild(none);
      body.appendChild(row);
    }
    for (const f of view.failed_events) {
      const row = el("tr");
      cell(row, "mono id", f.id);
      cell(row, "mono", f.publisher_backend === "" ? "default (empty)" : f.publisher_backend);
      cell(row, null, f.event_type);
      cell(row, "num", f.retry_count);
      cell(row, "num", time(f.updated_at));
      cell(row, "error-text", f.last_error);
      body.appendChild(row);
    }
    document.querySelector("#failed tbody").replaceWith(body);
    document.getElementById("failed-count").textContent = String(view.failed_events.length);
  }

  function niceMax(max) {
    if (!(max > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 5, 10]) if (m * step >= max) return m * step;
    return 10 * step;
  }
  function rate(n) {
    return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2).replace(/\.?0+$/, "");
  }

  function chart(view) {
    const t = view.throughput;
    const now = Date.parse(view.generated_at);
    const names = Object.keys(t.rates);
    let max = 0;
    for (const name of names) for (const r of t.rates[name]) max = Math.max(max, r);
    max = niceMax(max);
    const w = CHART.width - CHART.left - CHART.right;
    const h = CHART.height - CHART.top - CHART.bottom;
    const x = (iso) => CHART.left + w * (1 - (now - Date.parse(iso)) / 1000 / t.window_seconds);
    const y = (r) => CHART.top + h * (1 - r / max);
    const plot = svg("svg", { class: "plot", viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img",
      "aria-label": "published events per second, per publisher, over the last 10 minutes" });
    for (const v of [0, max / 2, max]) {
      plot.appendChild(svg("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right, y1: y(v), y2: y(v) }));
      plot.appendChild(svg("text", { x: CHART.left - 6, y: y(v) + 4, "text-anchor": "end" }, rate(v) + "/s"));
    }
    for (const [label, fraction] of [["-10 min", 0], ["-5 min", 0.5], ["now", 1]]) {
      plot.appendChild(svg("text", { x: CHART.left + w * fraction, y: CHART.height - 8,
        "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle" }, label));
    }
    if (t.times.length === 0) {
      plot.appendChild(svg("text", { x: CHART.left + w / 2, y: CHART.top + h / 2, "text-anchor": "middle" },
        "no samples yet: one every " + t.sample_seconds + " s"));
    }
    const legend = el("ul", "legend");
    names.forEach((name, i) => {
      const color = PALETTE[i % PALETTE.length];
      // Steps: each rate is level over its interval (the first one's is a sample long).
      const points = t.times.flatMap((at, k) => {
        const start = k === 0 ? new Date(Date.parse(at) - t.sample_seconds * 1000).toISOString() : t.times[k - 1];
        const r = y(t.rates[name][k]).toFixed(1);
        return [Math.max(CHART.left, x(start)).toFixed(1) + "," + r, x(at).toFixed(1) + "," + r];
      }).join(" ");
      const line = svg("polyline", { class: "series", stroke: color, points: points });
      line.appendChild(svg("title", {}, name));
      plot.appendChild(line);
      const item = el("li", "mono");
      const swatch = svg("svg", { viewBox: "0 0 10 10" });
      swatch.appendChild(svg("rect", { width: 10, height: 10, fill: color }));
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      legend.appendChild(item);
    });
    const box = document.getElementById("chart");
    box.replaceChildren(plot, legend);
  }

  function header(view) {
    document.getElementById("outbox-url").textContent = view.outbox.url;
    document.getElementById("counted-at").textContent = time(view.outbox.counted_at);
    document.getElementById("generated-at").textContent = time(view.generated_at);
    const error = document.getElementById("outbox-error");
    error.hidden = !view.outbox.error;
    error.textContent = view.outbox.error ? "counting the outbox failed: " + view.outbox.error : "";
  }

  async function refresh() {
    const state = document.getElementById("refresh");
    try {
      // From the origin, not relative: a page opened as http://user:token@host/ would make a
      // relative URL carry the credentials, which fetch refuses. The browser sends the
      // credentials it logged in with by itself.
      const answer = await fetch(location.origin + "/v1/status", { cache: "no-store", credentials: "same-origin" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const view = await answer.json();
      header(view);
      publishers(view);
      chart(view);
      failed(view);
      document.body.dataset.refreshed = "ok";
      state.textContent = "live: refreshed every " + EVERY_MS / 1000 + " s";
    } catch (err) {
      document.body.dataset.refreshed = "failed";
      state.textContent = "refresh failed (" + err.message + "); showing older values";
    }
  }

  refresh();
  setInterval(refresh, EVERY_MS);
})();
