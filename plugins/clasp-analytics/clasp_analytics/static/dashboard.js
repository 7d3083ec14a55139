// clasp gateway analytics dashboard. No inline code (the page's CSP forbids it); the
// admin key lives in an HttpOnly cookie set by /admin/dashboard/login, so this script
// never sees it after sign-in and never puts it in a URL.
"use strict";

(function () {
  const API = "/admin/analytics/";
  const DIMENSIONS = ["provider", "model", "key", "team", "project", "class", "tag"];
  const charts = {};
  let loadSeq = 0;

  const $ = (id) => document.getElementById(id);
  const int = (v) => (v === null || v === undefined ? "-" : Math.round(v).toLocaleString("en-US"));
  const usd = (v) => (v === null || v === undefined ? "-" : "$" + Number(v).toFixed(4));
  const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%");
  const ms = (v) => (v === null || v === undefined ? "-" : Math.round(v).toLocaleString("en-US") + " ms");
  const num = (v) => (v === null || v === undefined ? "-" : Number(v).toFixed(1));

  function show(id, value, format) {
    const el = $(id);
    el.textContent = format(value);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  // --- sign in / out ---------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const input = $("login-key");
    const error = $("login-error");
    error.hidden = true;
    const response = await fetch("/admin/dashboard/login", {
      method: "POST", credentials: "same-origin", headers: {"content-type": "application/json"},
      body: JSON.stringify({key: input.value}),
    });
    input.value = "";
    if (response.status === 204) {
      window.location.reload();
      return;
    }
    let message = "sign-in failed (" + response.status + ")";
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON */ }
    error.textContent = message;
    error.hidden = false;
  }

  async function signOut() {
    await fetch("/admin/dashboard/logout", {method: "POST", credentials: "same-origin"});
    window.location.reload();
  }

  // --- filters -----------------------------------------------------------------------------

  function filterParams() {
    const params = new URLSearchParams();
    const range = $("f-range").value;
    const now = Math.floor(Date.now() / 1000);
    if (range === "custom") {
      const since = $("f-since").value, until = $("f-until").value;
      if (since) params.set("since", String(Math.floor(new Date(since).getTime() / 1000)));
      if (until) params.set("until", String(Math.floor(new Date(until).getTime() / 1000)));
    } else {
      params.set("since", String(now - Number(range) * 86400));
      params.set("until", String(now + 60));
    }
    for (const name of DIMENSIONS) {
      const value = $("f-" + name).value;
      if (value) params.set(name, value);
    }
    return params;
  }

  async function getJSON(path, params) {
    const response = await fetch(API + path + "?" + params.toString(), {credentials: "same-origin"});
    if (response.status === 401 || response.status === 403) {
      window.location.reload();  // the cookie expired or the key was revoked: back to sign-in
      throw new Error("signed out");
    }
    const body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || ("HTTP " + response.status));
    return body;
  }

  async function loadMenus() {
    const params = filterParams();
    for (const name of DIMENSIONS) params.delete(name);
    const values = await getJSON("dimensions", params);
    for (const name of DIMENSIONS) {
      const select = $("f-" + name);
      const current = select.value;
      while (select.options.length > 1) select.remove(1);
      for (const value of values[name] || []) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = value;
        select.appendChild(option);
      }
      select.value = (values[name] || []).includes(current) ? current : "";
    }
  }

  // --- rendering ---------------------------------------------------------------------------

  function renderTotals(t) {
    show("total-requests", t.requests, int);
    show("total-errors", t.errors, int);
    show("error-rate", t.error_rate, pct);
    show("total-cost", t.cost_usd, usd);
    show("total-unpriced", t.unpriced, (v) => int(v) + " unpriced");
    show("total-input-tokens", t.input_tokens, int);
    show("total-output-tokens", t.output_tokens, int);
    show("total-cache-read-tokens", t.cache_read_tokens, int);
    show("total-cache-hits", t.cache_hits, int);
    show("cache-hit-rate", t.cache_hit_rate, pct);
    show("total-saved", t.saved_usd, usd);
    show("latency-p50", t.duration_ms.p50, ms);
    show("latency-p90", t.duration_ms.p90, ms);
    show("latency-p99", t.duration_ms.p99, ms);
    show("ttfb-p50", t.ttfb_ms.p50, ms);
    show("tokens-per-second", t.output_tokens_per_second, num);
    show("total-fallbacks", t.fallback_requests, int);
    show("total-retries", t.retries, (v) => int(v) + " retries");
  }

  // Axis ticks with the precision they need: $0.0005 steps must not all read "0.001".
  function axisValue(v) {
    if (v === null || v === undefined) return "";
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
    return String(Number(v.toPrecision(3)));
  }

  function chart(id, labels, colors, xs, ys) {
    const el = $(id);
    const width = Math.max(300, el.clientWidth || 500);
    const data = [xs, ...ys];
    if (charts[id]) {
      charts[id].setData(data);
      return;
    }
    const series = [{}].concat(labels.map((label, i) => ({label: label, stroke: colors[i], width: 2, spanGaps: true})));
    const axes = [{}, {size: 70, values: (u, splits) => splits.map(axisValue)}];
    charts[id] = new window.uPlot({width: width, height: 200, series: series, axes: axes}, data, el);
  }

  function renderSeries(body) {
    const p = body.points;
    const xs = p.map((x) => x.t);
    const col = (name) => p.map((x) => (x[name] === null || x[name] === undefined ? null : x[name]));
    chart("chart-volume", ["requests", "errors"], ["#2f6fde", "#c43d3d"], xs, [col("requests"), col("errors")]);
    chart("chart-cost", ["cost", "saved"], ["#8a4fd8", "#2a9d5b"], xs, [col("cost_usd"), col("saved_usd")]);
    chart("chart-tokens", ["input", "output", "cache read"], ["#2f6fde", "#e08a1e", "#2a9d5b"], xs,
          [col("input_tokens"), col("output_tokens"), col("cache_read_tokens")]);
    chart("chart-latency", ["p50", "p95"], ["#2f6fde", "#c43d3d"], xs, [col("p50_duration_ms"), col("p95_duration_ms")]);
    const rate = col("cache_hit_rate").map((v) => (v === null ? null : v * 100));
    chart("chart-cache", ["hit rate %"], ["#2a9d5b"], xs, [rate]);
  }

  function renderBreakdown(body) {
    const tbody = $("breakdown").querySelector("tbody");
    tbody.replaceChildren();
    for (const row of body.rows) {
      const tr = document.createElement("tr");
      tr.dataset.value = row.value === null ? "" : String(row.value);
      const cells = [row.value === null ? "(none)" : String(row.value), int(row.requests), int(row.errors),
                     int(row.input_tokens), int(row.output_tokens), usd(row.cost_usd), int(row.cache_hits),
                     usd(row.saved_usd), ms(row.avg_duration_ms)];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  async function refresh() {
    const seq = ++loadSeq;
    setStatus("loading…");
    document.body.dataset.loading = "true";
    try {
      const params = filterParams();
      const breakdownParams = new URLSearchParams(params);
      breakdownParams.set("by", $("breakdown-by").value);
      const [summary, series, breakdown] = await Promise.all([
        getJSON("summary", params), getJSON("timeseries", params), getJSON("breakdown", breakdownParams)]);
      if (seq !== loadSeq) return;  // a newer filter change won
      renderTotals(summary.totals);
      renderSeries(series);
      renderBreakdown(breakdown);
      setStatus("updated " + new Date().toLocaleTimeString());
    } catch (error) {
      if (seq === loadSeq) setStatus(String(error.message || error), true);
    } finally {
      if (seq === loadSeq) document.body.dataset.loading = "false";
    }
  }

  async function start() {
    if (document.body.dataset.state !== "signed-in") {
      $("login-form").addEventListener("submit", signIn);
      $("login-key").focus();
      return;
    }
    $("logout").addEventListener("click", signOut);
    const form = $("filters");
    form.addEventListener("change", async (event) => {
      form.classList.toggle("custom", $("f-range").value === "custom");
      if (event.target && event.target.id === "f-range") await loadMenus().catch(() => {});
      refresh();
    });
    $("f-reset").addEventListener("click", () => {
      form.reset();
      form.classList.remove("custom");
      refresh();
    });
    $("breakdown-by").addEventListener("change", refresh);
    try {
      await loadMenus();
    } catch (error) {
      setStatus(String(error.message || error), true);
    }
    await refresh();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
