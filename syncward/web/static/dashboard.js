// syncward dashboard: polls api/overview, renders with textContent only (no HTML from
// data), keeps a short history for the throughput sparkline and the ETA. No build step.
"use strict";

(() => {
  const STATES = ["planned", "leased", "succeeded", "failed", "skipped"];
  const TERMINAL = ["succeeded", "failed", "skipped"];
  const SAMPLES = 60;
  const $ = (id) => document.getElementById(id);
  const samples = []; // {t: seconds, done: finished jobs}
  let pollMs = 1000;
  let timer = null;
  let latest = null;

  const tokenInput = $("token");
  $("token-form").addEventListener("submit", (event) => event.preventDefault());
  tokenInput.value = sessionStorage.getItem("syncward-admin-token") || "";
  tokenInput.addEventListener("input", () => {
    sessionStorage.setItem("syncward-admin-token", tokenInput.value);
  });

  function show(el, value) {
    el.textContent = value === null || value === undefined ? "–" : String(value);
  }

  function make(tag, text, cls) {
    const el = document.createElement(tag);
    if (text !== undefined && text !== null) el.textContent = String(text);
    if (cls) el.className = cls;
    return el;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell); else show(td, cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tableId, rows) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren(...rows);
  }

  const num = (n) => (typeof n === "number" ? n.toLocaleString("en") : "–");
  const short = (key) => (key ? key.slice(0, 12) : "–");
  const when = (at) => (at ? new Date(at * 1000).toLocaleTimeString() : "–");

  function duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "–";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 90) return `${seconds.toFixed(1)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function identity(value) {
    return JSON.stringify(value === undefined ? null : value);
  }

  function progressBar(progress) {
    if (!progress) return "–";
    const wrap = make("div");
    const label = progress.total
      ? `${num(progress.done)} / ${num(progress.total)}`
      : num(progress.done);
    if (typeof progress.fraction === "number") {
      const bar = make("div", null, "bar");
      const fillEl = make("span");
      fillEl.style.width = `${(progress.fraction * 100).toFixed(1)}%`;
      bar.appendChild(fillEl);
      wrap.appendChild(bar);
    }
    wrap.appendChild(make("span", label, "small mono"));
    return wrap;
  }

  function renderHealth(data) {
    const badge = $("health");
    badge.dataset.status = data.health.status;
    badge.textContent = data.health.status === "ok" ? "healthy" : "unhealthy";
    const reasons = $("reasons");
    reasons.replaceChildren(...data.health.reasons.map((r) => make("li", r)));
    reasons.hidden = data.health.reasons.length === 0;
    $("paused").hidden = !data.paused;
    show($("mode"), data.mode === "live" ? `runtime ${data.worker || ""}` : "watching");
    show($("store"), data.store);
    show($("updated"), `updated ${new Date().toLocaleTimeString()}`);
  }

  function renderCounts(data) {
    for (const s of STATES) show($(`count-${s}`), num(data.counts[s]));
    show($("count-total"), num(data.total));
    const done = TERMINAL.reduce((sum, s) => sum + (data.counts[s] || 0), 0);
    samples.push({ t: performance.now() / 1000, done });
    while (samples.length > SAMPLES + 1) samples.shift();
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = samples[i].t - samples[i - 1].t;
      rates.push(dt > 0 ? Math.max(0, samples[i].done - samples[i - 1].done) / dt : 0);
    }
    const top = Math.max(1, ...rates);
    const step = 300 / Math.max(1, SAMPLES - 1);
    $("spark").setAttribute("points", rates.map(
      (r, i) => `${(i * step).toFixed(1)},${(40 - (r / top) * 38).toFixed(1)}`).join(" "));
    show($("rate"), rates.length ? `${rates[rates.length - 1].toFixed(1)} jobs/s` : "– jobs/s");
  }

  function recentRate() {
    const first = samples[Math.max(0, samples.length - 11)];
    const last = samples[samples.length - 1];
    if (!first || !last || last.t <= first.t) return 0;
    return (last.done - first.done) / (last.t - first.t);
  }

  function renderRun(data) {
    let done;
    let total;
    if (data.run && data.run.status === "running") {
      show($("run-title"), `run ${data.run.id}: ${data.run.source}`);
      done = data.run.done;
      total = data.run.total;
    } else {
      show($("run-title"), "all jobs in the store");
      done = TERMINAL.reduce((sum, s) => sum + (data.counts[s] || 0), 0);
      total = data.total;
    }
    $("run-bar").value = total ? done / total : 0;
    show($("run-text"), `${num(done)} / ${num(total)} done`);
    const rate = recentRate();
    const left = total - done;
    let eta = "ETA –";
    if (left <= 0) eta = "finished";
    else if (data.paused) eta = "paused";
    else if (rate > 0) eta = `ETA ${duration(left / rate)}`;
    show($("eta"), eta);
    show($("in-hand"), num(data.in_hand));
  }

  function renderFailures(data) {
    show($("failed-total"), `(${num(data.counts.failed)})`);
    fill("failures", data.failures.map((job) => {
      const error = make("details");
      const firstLine = (job.error || "").split("\n")[0];
      error.appendChild(make("summary", firstLine || "–"));
      error.appendChild(make("pre", job.error || ""));
      const button = make("button", "Retry", "retry");
      button.type = "button";
      button.dataset.key = job.key;
      button.addEventListener("click", () => retry([job.key]));
      const tr = row([make("span", short(job.key), "mono"), identity(job.identity),
        `${job.attempts}/${job.max_attempts}`, error, button]);
      tr.dataset.key = job.key;
      tr.children[3].className = "error";
      return tr;
    }));
    $("failures-empty").hidden = data.failures.length > 0;
  }

  function renderLeases(data) {
    fill("leases", data.leases.map((lease) => {
      const tr = row([make("span", short(lease.key), "mono"), lease.owner, lease.stage || "–",
        progressBar(lease.progress), when(lease.expires_at)]);
      tr.dataset.key = lease.key;
      return tr;
    }));
    $("leases-empty").hidden = data.leases.length > 0;
  }

  function renderWorkers(data) {
    fill("workers", data.workers.map((w) => row([
      w.name, w.alive ? `${w.status} (live)` : w.status,
      `${w.host || "?"} pid ${w.pid ?? "?"}`,
      w.heartbeat_age === null ? "–" : `${duration(w.heartbeat_age)} ago`])));
  }

  function renderReconciliation(data) {
    const rec = data.reconciliation;
    if (!rec) {
      show($("reconcile-totals"), "no live runtime: nothing recorded");
      fill("reconciliation", []);
      return;
    }
    const fixed = rec.fixed_total || {};
    show($("reconcile-totals"), `${num(rec.cycles_total)} cycles; fixed: ` +
      Object.entries(fixed).map(([k, v]) => `${k.replace(/_/g, " ")} ${num(v)}`).join(", "));
    fill("reconciliation", (rec.cycles || []).map((c) => row([
      when(c.at), c.origin, duration(c.seconds), c.fixed ? String(c.fixed) : "nothing"])));
  }

  function renderRestarts(data) {
    show($("drift"), `last recount ${num(data.drift.last)}, total ${num(data.drift.total)} ` +
      `over ${num(data.drift.checks)} recounts`);
    show($("restarts-total"), num(data.restarts.total));
    $("restarts").replaceChildren(...data.restarts.recent.map((r) => make("li",
      `${when(r.at)} ${r.supervisor || ""}/${r.actor || ""} ${r.kind || ""}: ${r.error || ""}`)));
  }

  function renderAdmin(data) {
    const usable = data.admin.writable;
    for (const id of ["pause-btn", "resume-btn", "refresh-btn", "reconcile-btn",
      "retry-all-btn"]) {
      $(id).disabled = !usable;
    }
    for (const b of document.querySelectorAll("button.retry")) b.disabled = !usable;
    if (!usable) {
      message("Read-only: this page watches a store; act through the runtime's own page.");
    } else if (!data.admin.configured) {
      message("Admin actions are disabled: no admin token is configured on the server.");
    }
  }

  function render(data) {
    latest = data;
    pollMs = data.poll_ms || pollMs;
    renderHealth(data);
    renderCounts(data);
    renderRun(data);
    renderFailures(data);
    renderLeases(data);
    renderWorkers(data);
    renderReconciliation(data);
    renderRestarts(data);
    renderAdmin(data);
  }

  function message(text, kind) {
    const el = $("admin-msg");
    el.textContent = text;
    el.className = `small ${kind || ""}`;
  }

  async function poll() {
    clearTimeout(timer);
    try {
      const response = await fetch("api/overview", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
    } catch (err) {
      const badge = $("health");
      badge.dataset.status = "offline";
      badge.textContent = `offline (${err.message})`;
    } finally {
      timer = setTimeout(poll, pollMs);
    }
  }

  async function admin(path, body, done) {
    const token = tokenInput.value.trim();
    if (!token) {
      message("Enter the admin token first.", "bad");
      tokenInput.focus();
      return;
    }
    const init = { method: "POST", headers: { Authorization: `Bearer ${token}` } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      const response = await fetch(path, init);
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        message(data.error || `HTTP ${response.status}`, "bad");
        return;
      }
      message(done(data), "good");
    } catch (err) {
      message(`failed: ${err.message}`, "bad");
    }
    poll();
  }

  function retry(keys) {
    admin("api/jobs/retry", keys ? { keys } : { all: true }, (d) =>
      `${d.requeued} failed job(s) back to planned` +
      (d.not_requeued && d.not_requeued.length ? `; ${d.not_requeued.length} were not failed` : ""));
  }

  $("pause-btn").addEventListener("click", () => admin("api/pause", undefined,
    () => "paused: no new job starts"));
  $("resume-btn").addEventListener("click", () => admin("api/resume", undefined,
    () => "resumed"));
  $("refresh-btn").addEventListener("click", () => admin("api/stats/refresh", undefined,
    (d) => `recounted: drift ${d.drift.off}`));
  $("reconcile-btn").addEventListener("click", () => admin("api/reconciliation", undefined,
    (d) => `reconciled: ${d.leases_requeued} lease(s) requeued, ${d.leases_failed} failed, ` +
      `${d.workers_marked_dead.length} worker(s) marked dead`));
  $("retry-all-btn").addEventListener("click", () => retry(null));

  window.syncwardDashboard = { poll, latest: () => latest };
  poll();
})();
