// mitmflare dashboard: the column descriptions of a table page go into a collapsed block and
// become each column header's tooltip; a truncated cell shows its full text on hover. A row's
// page (and a query's single row that is wider than the page) reads top to bottom: one line
// per column, its value wrapped, a very long one scrolling inside its cell.
function mfRecord(table) {
  const names = [...table.querySelectorAll("thead th")];
  const cells = [...table.querySelectorAll("tbody tr:first-child > td")];
  const body = document.createElement("tbody");
  cells.forEach((td, i) => {
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = names[i] ? (names[i].dataset.column || names[i].textContent.trim()) : "";
    const description = names[i] && names[i].dataset.columnDescription;
    if (description) th.title = description;
    const value = document.createElement("div");
    value.className = "mf-value";
    value.append(...td.childNodes);
    td.append(value);
    const tr = document.createElement("tr");
    tr.append(th, td);
    body.append(tr);
  });
  const record = document.createElement("table");
  record.className = "mf-record";
  record.append(body);
  table.replaceWith(record);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.rows-and-columns").forEach((table) => {
    if (table.tBodies.length !== 1 || table.tBodies[0].rows.length !== 1) return;
    const box = table.parentElement;
    const tooWide = box && box.scrollWidth > box.clientWidth;
    if (document.body.classList.contains("row") || tooWide) mfRecord(table);
  });
  const list = document.querySelector("dl.column-descriptions");
  if (list) {
    const descriptions = {};
    list.querySelectorAll("dt").forEach((dt) => {
      descriptions[dt.textContent.trim()] = dt.nextElementSibling ? dt.nextElementSibling.textContent : "";
    });
    document.querySelectorAll("th[data-column]").forEach((th) => {
      const text = descriptions[th.dataset.column];
      if (text) th.title = text;
    });
    const details = document.createElement("details");
    details.className = "column-descriptions";
    const summary = document.createElement("summary");
    summary.textContent = `What the ${Object.keys(descriptions).length} columns mean (or hover a column header)`;
    list.replaceWith(details);
    details.append(summary, list);
  }
  document.querySelectorAll("table.rows-and-columns td").forEach((td) => {
    if (!td.title && td.textContent.length > 30) td.title = td.textContent.trim();
  });
});

// The overview dashboard: below the headline tiles, account cards (status, 5h / 7d window
// bars with reset countdowns, forecast, token health, cost against budget, where the next
// request goes) in the "accounts-now" card; the latest requests in "recent-requests"; all of
// it refreshed every 10 s without reloading the page (the charts by running the dashboards
// plugin's own renderChart calls again). "Pause" stops it; "#refresh=N" at the end of the
// address refreshes every N seconds instead.
const MF_DB = "/mitmflare";
const MF_RECENT_ROWS = 10;

function mfRefreshMs() {
  const match = /(?:^#|&)refresh=(\d+(?:\.\d+)?)/.exec(location.hash);
  return Math.max(match ? Number(match[1]) : 10, 0.5) * 1000;
}

function mfEl(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") el.style.cssText = value;
    else el.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) el.append(child);
  return el;
}

function mfIn(iso) {
  if (!iso) return "";
  const minutes = Math.round((Date.parse(iso) - Date.now()) / 60000);
  if (minutes <= 0) return "now";
  const h = Math.floor(minutes / 60), m = minutes % 60;
  return h ? `${h} h ${m} min` : `${m} min`;
}

function mfTone(health) {
  if (health === "serving") return "serving";
  if (health === "next in line" || health === "standby") return "ok";
  if (health === "near limit" || health.startsWith("token expires")) return "warn";
  if (health === "paused") return "idle";
  return "bad";
}

function mfBar(label, used, reset, forecast) {
  if (used === null || used === undefined) return null;
  if (reset && Date.parse(reset) <= Date.now()) {  // the last answer predates the reset
    return mfEl("div", {class: "mf-window"},
      mfEl("div", {class: "mf-window-label"}, `${label} reset, not used since`),
      mfEl("div", {class: "mf-bar"}));
  }
  const pct = Math.max(0, used * 100);  // may exceed 100 %: the bar stops at full
  const tone = used >= 1 ? "bad" : used >= 0.8 ? "warn" : "ok";
  return mfEl("div", {class: "mf-window"},
    mfEl("div", {class: "mf-window-label"}, `${label} ${pct.toFixed(0)} %`,
      reset ? mfEl("span", {class: "mf-muted"}, ` · resets in ${mfIn(reset)}`) : null),
    mfEl("div", {class: "mf-bar", title: forecast || ""},
      mfEl("div", {class: `mf-bar-fill mf-${tone}`, style: `width: ${Math.min(100, pct)}%`})),
    forecast ? mfEl("div", {class: "mf-muted mf-small"}, forecast) : null);
}

function mfCard(a) {
  const budget = a.budget_day_usd !== null ? ` of $${a.budget_day_usd}` : "";
  return mfEl("div", {class: `mf-card mf-${mfTone(a.health)}`, "data-account": a.account},
    mfEl("div", {class: "mf-card-head"},
      mfEl("a", {href: `${MF_DB}/accounts/${encodeURIComponent(a.account)}`}, a.account),
      mfEl("span", {class: "mf-muted"}, ` ${a.provider}`)),
    mfEl("div", {class: "mf-health"}, a.health),
    mfBar("5h", a.used_5h, a.reset_5h, a.forecast_5h),
    mfBar("7d", a.used_7d, a.reset_7d, a.forecast_7d),
    a.used_5h === null ? mfBar("limits", a.used_bucket, a.reset_bucket, null) : null,
    a.token_health ? mfEl("div", {class: "mf-small"}, `token ${a.token_health}`) : null,
    mfEl("div", {class: "mf-small"}, `today $${Number(a.cost_today_usd || 0).toFixed(4)}${budget}`
      + (a.credential === "oauth" ? " at API prices" : "")),
    a.last_error ? mfEl("div", {class: "mf-small mf-muted", title: a.last_error},
      `last error: ${a.last_error}`) : null);
}

function mfRecent(rows) {
  const head = ["time", "account", "model", "status", "tokens in/out", "cost", "ms", "failover"];
  const table = mfEl("table", {class: "mf-recent"},
    mfEl("thead", {}, mfEl("tr", {}, ...head.map((h) => mfEl("th", {}, h)))));
  const body = mfEl("tbody");
  for (const r of rows) {
    body.append(mfEl("tr", {class: r.status >= 400 ? "mf-error-row" : ""},
      mfEl("td", {}, mfEl("a", {href: `${MF_DB}/requests/${encodeURIComponent(r.id)}`},
        (r.started_at || "").slice(11, 19))),
      mfEl("td", {}, r.account || "-"), mfEl("td", {}, r.model || "-"),
      mfEl("td", {}, String(r.status ?? "-")),
      mfEl("td", {}, `${r.input_tokens ?? 0}/${r.output_tokens ?? 0}`),
      mfEl("td", {}, r.cost_usd === null ? "?" : `$${r.cost_usd}`),
      mfEl("td", {}, String(r.ms ?? "")), mfEl("td", {}, r.failover ? "yes" : "")));
  }
  table.append(body);
  return table;
}

async function mfQuery(name) {
  const response = await fetch(`${MF_DB}/${name}.json?_shape=array`, {credentials: "same-origin"});
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response.json();
}

async function mfRefreshPanel(panel, recentBox) {
  try {
    const [accounts, recent] = await Promise.all([mfQuery("account_health"), mfQuery("recent_requests")]);
    const next = accounts.find((a) => a.position === 1);
    panel.querySelector(".mf-next").textContent =
      next ? `next request → ${next.account}` : "no account is serving now";
    panel.querySelector(".mf-cards").replaceChildren(...accounts.map(mfCard));
    recentBox.replaceChildren(mfRecent(recent.slice(0, MF_RECENT_ROWS)));
    panel.querySelector(".mf-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    panel.querySelector(".mf-updated").textContent = `not updated: ${error.message}`;
  }
}

// A function that draws the charts again: the page's own renderChart calls, run once more.
// The plugin's metric and table renderers append what they draw to the chart's element, so
// after each of them only the newest drawing is kept: a redraw replaces, never adds. Vega-Lite
// charts replace themselves (vega-embed). Resolves when every chart is drawn (or failed).
function mfChartRedraw() {
  const script = [...document.scripts].find((s) => s.textContent.includes("renderChart("));
  if (!script || typeof renderChart !== "function") return null;
  const render = renderChart;
  const calls = new Function("renderChart", "autorefresh", script.textContent);
  return () => {
    const drawn = [];
    calls((slug, chart, ...rest) => {
      drawn.push(Promise.resolve(render(slug, chart, ...rest)).then(() => {
        const el = document.getElementById(`chart-${slug}`);
        if (el && (chart.library === "metric" || chart.library === "table")) {
          while (el.childElementCount > 1) el.firstElementChild.remove();
        }
      }));
    }, () => {});
    return Promise.allSettled(drawn);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const grid = document.querySelector(".dashboard-grid");
  if (!grid || !location.pathname.endsWith("/-/dashboards/overview")) return;
  const pause = mfEl("button", {type: "button", class: "mf-pause"}, "Pause");
  const panel = mfEl("section", {id: "mf-health"},
    mfEl("div", {class: "mf-panel-head"}, mfEl("h2", {}, "Accounts now"),
      mfEl("span", {class: "mf-next"}), mfEl("span", {class: "mf-updated mf-muted"}), pause),
    mfEl("div", {class: "mf-cards"}));
  const recentBox = mfEl("div", {class: "mf-recent-box"});
  const recent = mfEl("section", {id: "mf-recent"},
    mfEl("div", {class: "mf-panel-head"}, mfEl("h2", {}, `Recent requests (latest ${MF_RECENT_ROWS})`),
      mfEl("a", {href: `${MF_DB}/requests`}, "all requests →")),
    recentBox);
  // into their cards of the layout; a metadata file without them gets them above the charts
  for (const [slug, section] of [["accounts-now", panel], ["recent-requests", recent]]) {
    const slot = document.getElementById(`chart-${slug}`);
    if (slot) slot.replaceChildren(section);
    else grid.before(section);
  }
  const redraw = mfChartRedraw();
  let paused = false, busy = false, refreshes = 0;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
  });
  mfRefreshPanel(panel, recentBox);
  setInterval(async () => {  // one refresh at a time: a slow one skips the next tick
    if (paused || busy || document.hidden) return;
    busy = true;
    try {
      await Promise.all([mfRefreshPanel(panel, recentBox), redraw ? redraw() : null]);
    } finally {
      busy = false;
      panel.dataset.refreshes = String(++refreshes);
    }
  }, mfRefreshMs());
});
