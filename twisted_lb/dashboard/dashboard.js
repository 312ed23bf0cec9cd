// twisted-lb dashboard: polls /dashboard/stats.json every second and updates the tables in
// place. Rates and percentiles come from the counters of the snapshots of the last WINDOW
// seconds, as Prometheus' rate() and histogram_quantile() compute them. Plain JavaScript,
// no library, no build step.
"use strict";

(function () {
  const STATS_URL = "/dashboard/stats.json";
  const INTERVAL_MS = 1000;
  const WINDOW_S = 10;
  const TOKEN_KEY = "twisted-lb-admin-token";

  const history = []; // snapshots, oldest first, spanning at most WINDOW_S seconds
  let tokenRequired = true;
  let lastOk = 0;

  const $ = (id) => document.getElementById(id);

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function sum(values) {
    return values.reduce((a, b) => a + b, 0);
  }

  function fmtRate(value) {
    if (value === null || !isFinite(value)) return "–";
    if (value === 0) return "0";
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  function fmtBytes(value) {
    if (value === null || !isFinite(value)) return "–";
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let i = 0;
    while (value >= 1000 && i < units.length - 1) {
      value /= 1000;
      i++;
    }
    return (i === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[i];
  }

  function fmtSeconds(value) {
    if (value === null || !isFinite(value)) return "–";
    return value < 1 ? (value * 1000).toFixed(1) + " ms" : value.toFixed(2) + " s";
  }

  function fmtAgo(seconds) {
    if (seconds < 60) return Math.max(0, Math.round(seconds)) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  // The quantile q of the values counted in a histogram: linear interpolation inside the
  // bucket that holds the rank, as Prometheus' histogram_quantile(); above the last bound,
  // the last bound.
  function quantile(q, bounds, counts) {
    const total = sum(counts);
    if (total <= 0) return null;
    const rank = q * total;
    let below = 0;
    for (let i = 0; i < counts.length; i++) {
      if (below + counts[i] >= rank && counts[i] > 0) {
        if (i >= bounds.length) return bounds[bounds.length - 1];
        const lower = i === 0 ? 0 : bounds[i - 1];
        return lower + ((bounds[i] - lower) * (rank - below)) / counts[i];
      }
      below += counts[i];
    }
    return bounds[bounds.length - 1];
  }

  function deltas(now, then) {
    return now.map((v, i) => Math.max(0, v - (then ? then[i] || 0 : v)));
  }

  // Lookups of the same object in the oldest snapshot of the window.
  function oldest() {
    return history.length > 1 ? history[0] : null;
  }
  function findFrontend(snapshot, name) {
    return snapshot ? snapshot.frontends.find((f) => f.name === name) : undefined;
  }
  function findPool(snapshot, name) {
    return snapshot ? snapshot.pools.find((p) => p.name === name) : undefined;
  }
  function findBackend(pool, name) {
    return pool ? pool.backends.find((b) => b.name === name) : undefined;
  }

  function rate(now, then, elapsed) {
    if (then === undefined || then === null || elapsed <= 0) return null;
    return Math.max(0, now - then) / elapsed;
  }

  function setCells(row, values) {
    values.forEach((value, i) => {
      const cell = row.cells[i];
      if (value !== null && cell.textContent !== value) cell.textContent = value;
    });
  }

  // The child of container whose data-key is id, if any.
  function child(container, id) {
    return container.querySelector(`:scope > [data-key="${CSS.escape(id)}"]`);
  }

  // Make container's children one per item, in order: keep the existing ones (so that a
  // button is never replaced under the pointer), build the missing ones, drop the others.
  function syncChildren(container, items, key, build) {
    const seen = new Set();
    items.forEach((item, index) => {
      const id = key(item);
      seen.add(id);
      let node = child(container, id);
      if (!node) {
        node = build(item);
        node.dataset.key = id;
      }
      if (container.children[index] !== node) {
        container.insertBefore(node, container.children[index] || null);
      }
    });
    Array.from(container.children).forEach((node) => {
      if (!seen.has(node.dataset.key)) node.remove();
    });
  }

  function renderFrontends(snapshot, elapsed) {
    const tbody = $("frontends").tBodies[0];
    const then = oldest();
    syncChildren(tbody, snapshot.frontends, (f) => f.name, (f) => {
      const row = el("tr");
      row.dataset.frontend = f.name;
      for (let i = 0; i < 10; i++) row.appendChild(el("td", i >= 2 ? "num" : ""));
      return row;
    });
    snapshot.frontends.forEach((f) => {
      const row = child(tbody, f.name);
      const old = findFrontend(then, f.name);
      const http = f.mode === "http";
      setCells(row, [
        f.name,
        f.mode,
        String(f.active),
        String(f.limit),
        fmtRate(rate(f.accepted, old && old.accepted, elapsed)),
        http ? fmtRate(rate(sum(f.requests), old && sum(old.requests), elapsed)) : "–",
        http ? fmtRate(rate(f.requests[4], old && old.requests[4], elapsed)) : "–",
        fmtBytes(rate(f.bytes_in, old && old.bytes_in, elapsed)),
        fmtBytes(rate(f.bytes_out, old && old.bytes_out, elapsed)),
        String(f.refused),
      ]);
    });
  }

  const BACKEND_COLUMNS = [
    "Backend", "Address", "State", "Weight", "Active", "In flight", "Req/s", "5xx/s",
    "EWMA", "Last health-check failure", "",
  ];

  function buildPool(pool) {
    const section = el("div", "pool");
    section.dataset.pool = pool.name;
    const title = el("h2");
    title.appendChild(el("span", "", "Pool " + pool.name));
    title.appendChild(el("span", "meta"));
    section.appendChild(title);
    const table = el("table", "backends");
    const head = table.createTHead().insertRow();
    BACKEND_COLUMNS.forEach((name, i) => {
      head.appendChild(el("th", i >= 3 && i <= 8 ? "num" : "", name));
    });
    table.createTBody();
    section.appendChild(table);
    return section;
  }

  function buildBackend(pool, backend) {
    const row = el("tr", "backend");
    row.dataset.pool = pool.name;
    row.dataset.backend = backend.name;
    BACKEND_COLUMNS.forEach((_, i) => {
      const cell = el("td", i >= 3 && i <= 8 ? "num" : i === 9 ? "reason" : "");
      row.appendChild(cell);
    });
    row.cells[2].appendChild(el("span", "badge"));
    const actions = row.cells[10];
    actions.className = "actions";
    for (const state of ["drain", "ready"]) {
      const button = el("button", state, state === "drain" ? "Drain" : "Ready");
      button.type = "button";
      button.addEventListener("click", () => setState(pool.name, backend.name, state));
      actions.appendChild(button);
    }
    return row;
  }

  function renderPools(snapshot, elapsed) {
    const container = $("pools");
    const then = oldest();
    const canAct = !tokenRequired || token() !== "";
    syncChildren(container, snapshot.pools, (p) => p.name, buildPool);
    snapshot.pools.forEach((pool) => {
      const section = child(container, pool.name);
      const oldPool = findPool(then, pool.name);
      const duration = deltas(pool.duration, oldPool && oldPool.duration);
      const firstByte = deltas(pool.first_byte, oldPool && oldPool.first_byte);
      const p50 = oldPool ? quantile(0.5, pool.bounds, duration) : null;
      const p99 = oldPool ? quantile(0.99, pool.bounds, duration) : null;
      const ttfb = oldPool ? quantile(0.99, pool.bounds, firstByte) : null;
      const requests = oldPool ? sum(duration) / elapsed : null;
      const up = pool.backends.filter((b) => b.badge === "UP" || b.badge === "SLOW START").length;
      section.querySelector(".meta").textContent =
        `${pool.strategy} · ${up}/${pool.backends.length} up · ${fmtRate(requests)} req/s · ` +
        `p50 ${fmtSeconds(p50)} · p99 ${fmtSeconds(p99)} · p99 first byte ${fmtSeconds(ttfb)}`;
      const meta = section.querySelector(".meta");
      meta.dataset.p50 = p50 === null ? "" : String(p50);
      meta.dataset.p99 = p99 === null ? "" : String(p99);
      const tbody = section.querySelector("table").tBodies[0];
      syncChildren(tbody, pool.backends, (b) => b.name, (b) => buildBackend(pool, b));
      pool.backends.forEach((b) => {
        const row = child(tbody, b.name);
        const old = findBackend(oldPool, b.name);
        const badge = row.cells[2].firstChild;
        badge.textContent = b.badge;
        badge.className = "badge " + b.badge.replace(" ", "-");
        row.dataset.state = b.badge;
        const weight = b.effective_weight < b.weight
          ? `${b.effective_weight.toFixed(1)}/${b.weight}` : String(b.weight);
        let reason = "";
        if (b.last_check_failure) {
          reason = `${b.last_check_failure} (${fmtAgo(snapshot.time - b.last_check_failure_at)})`;
        }
        const cells = [
          b.name + (b.backup ? " (backup)" : ""),
          b.address,
          null,
          weight,
          String(b.active),
          String(b.in_flight),
          fmtRate(rate(sum(b.requests), old && sum(old.requests), elapsed)),
          fmtRate(rate(b.requests[4], old && old.requests[4], elapsed)),
          b.ewma > 0 ? fmtSeconds(b.ewma) : "–",
          reason,
        ];
        setCells(row, cells);
        const actions = row.cells[10];
        actions.hidden = !canAct;
        actions.querySelector("button.drain").disabled = b.badge === "DRAIN";
        actions.querySelector("button.ready").disabled = !["DRAIN", "MAINT"].includes(b.badge);
      });
    });
  }

  function render(snapshot) {
    const then = oldest();
    const elapsed = then ? snapshot.time - then.time : 0;
    tokenRequired = snapshot.token_required;
    renderFrontends(snapshot, elapsed);
    renderPools(snapshot, elapsed);
  }

  async function poll() {
    try {
      const response = await fetch(STATS_URL, { cache: "no-store" });
      if (!response.ok) throw new Error(`${STATS_URL}: HTTP ${response.status}`);
      const snapshot = await response.json();
      history.push(snapshot);
      while (history.length > 2 && snapshot.time - history[1].time >= WINDOW_S) history.shift();
      render(snapshot);
      lastOk = Date.now();
      const status = $("status");
      status.textContent = `twisted-lb ${snapshot.version} · updated ${new Date().toLocaleTimeString()}`;
      status.classList.remove("stale");
    } catch (error) {
      const status = $("status");
      status.textContent = `no update since ${lastOk ? new Date(lastOk).toLocaleTimeString() : "start"}: ${error.message}`;
      status.classList.add("stale");
    } finally {
      setTimeout(poll, INTERVAL_MS);
    }
  }

  async function setState(pool, backend, state) {
    const message = $("message");
    message.textContent = "";
    const headers = { "Content-Type": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    const url = `/api/v1/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend)}`;
    try {
      const response = await fetch(url, {
        method: "PATCH", headers, body: JSON.stringify({ state }),
      });
      if (!response.ok) {
        const text = await response.text();
        message.textContent = `${state} ${pool}/${backend}: HTTP ${response.status} ${text}`;
      }
    } catch (error) {
      message.textContent = `${state} ${pool}/${backend}: ${error.message}`;
    }
  }

  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
  });
  poll();
})();
