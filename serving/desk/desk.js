// The desk page: a pledge-price form and the book of the latest sweep, over the service's JSON API.
// The API key lives in sessionStorage only: gone when the tab closes, never in the URL.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "pledgeval.apiKey";
const MAX_PHOTO_BYTES = 8 * 1024 * 1024;  // the service's per-image limit
// Every amount carries the catalogue's currency (policy.toml's [catalogue], from /desk/settings.json) once known.
let money = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2, minimumFractionDigits: 2 });
const count = new Intl.NumberFormat();
const pct = (x) => `${(100 * x).toFixed(1)}%`;
const ltvText = (x) => (x == null ? "–" : `${Math.round(100 * x)}%`);
let photoBase64 = null;
const settings = fetch("settings.json")  // beside the page: /desk/settings.json
  .then((r) => (r.ok ? r.json() : {})).catch(() => ({}))
  .then((s) => {
    if (s.currency) money = new Intl.NumberFormat(undefined, { style: "currency", currency: s.currency });
    return s;
  });

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { "X-API-Key": key } : {};
}

// Every API failure becomes a sentence for the officer, never a blank panel.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  } catch (err) {
    throw new Error(`The pricing service cannot be reached (${err.message}).`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    throw new Error(explain(response.status, body, text));
  }
  return body;
}

function explain(status, body, text) {
  const first = Array.isArray(body) ? body[0] : body;  // a failed batch answers per item
  const detail = (first && (first.error || first.detail || first.message)) || text || "";
  const said = typeof detail === "string" ? detail : JSON.stringify(detail);
  if (status === 401) return "The API key is missing or wrong: enter the desk's key above.";
  if (status === 404) return `Not found: ${said}`;
  if (status === 413) return `Too large: ${said}`;
  if (status === 400 && /image/i.test(said)) return `The photo could not be used: ${said}`;
  return `The request was refused (${status}): ${said}`;
}

function show(el, on) { el.hidden = !on; }

function fail(box, err) {
  box.textContent = err.message;
  show(box, true);
}

// -- the key ---------------------------------------------------------------------------------
function showKeyState() {
  $("key-state").textContent = sessionStorage.getItem(KEY) ? "key set for this tab" : "no key";
}
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  $("api-key").value = "";
  showKeyState();
});

// -- the photo -------------------------------------------------------------------------------
function takePhoto(file) {
  if (!file) return;
  if (file.size > MAX_PHOTO_BYTES) {
    fail($("price-error"), new Error(`The photo is ${(file.size / 1048576).toFixed(1)} MB; at most 8 MB.`));
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    photoBase64 = String(reader.result).split(",", 2)[1] || "";
    $("preview").src = reader.result;
    show($("preview"), true);
    show($("clear-photo"), true);
  };
  reader.readAsDataURL(file);
}
function clearPhoto() {
  photoBase64 = null;
  $("photo").value = "";
  $("preview").removeAttribute("src");
  show($("preview"), false);
  show($("clear-photo"), false);
}
$("photo").addEventListener("change", () => takePhoto($("photo").files[0]));
$("clear-photo").addEventListener("click", clearPhoto);
$("preview").addEventListener("error", () => show($("preview"), false));  // the browser cannot show it either
const drop = $("drop");
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
drop.addEventListener("keydown", (event) => {  // the drop zone takes focus: Enter or Space picks a file
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("photo").click();
  }
});
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  takePhoto(event.dataTransfer.files[0]);
});

// -- pricing ---------------------------------------------------------------------------------
$("price-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  show($("price-error"), false);
  show($("price-result"), false);
  const item = {
    spu_id: `desk-${Date.now()}`,
    title: $("title").value.trim(),
    quantity: Number($("quantity").value),
    reviews: $("reviews").value.split("\n").map((r) => r.trim()).filter(Boolean),
  };
  if (photoBase64) item.image_base64 = photoBase64;
  // a new SPU takes a few seconds: say so, and keep the form from being sent twice meanwhile
  $("submit-price").disabled = true;
  $("submit-price").textContent = "Pricing…";
  show($("price-status"), true);
  try {
    const answers = await api("/price", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: [item] }),
    });
    const answer = answers[0];
    if (answer.error) throw new Error(explain(400, { error: answer.error }, ""));
    await renderPrice(answer);
  } catch (err) {
    fail($("price-error"), err);
  } finally {
    $("submit-price").disabled = false;
    $("submit-price").textContent = "Get pledge price";
    show($("price-status"), false);
  }
});

async function renderPrice(a) {
  await settings;
  $("r-value").textContent = money.format(a.value);
  $("r-interval").textContent = `90% interval ${money.format(a.value_low)} – ${money.format(a.value_high)}`;
  $("r-pledge").textContent = money.format(a.pledge_unit_price);
  $("r-total").textContent = `× ${count.format(a.quantity)} units = ${money.format(a.pledge_value)} pledge value`;
  $("r-basis").textContent = a.value_basis || "";
  $("r-decision").textContent = a.decision;
  $("r-decision").className = `big decision-${a.decision}`;
  const reasons = $("r-reasons");
  const said = a.reason_text && a.reason_text.length ? a.reason_text :
    [a.decision === "accept" ? "Within policy: nothing needs a closer look." : "No reason given."];
  reasons.replaceChildren(...said.map((r) => li(r)));
  $("r-haircut").textContent = pct(a.haircut);
  // the step from value to pledge price, each haircut part as an amount (a learned haircut has its own
  // two parts; the rule parts are null then)
  const steps = $("r-haircut-parts").tBodies[0];
  const parts = HAIRCUT_PARTS.filter(([name]) => a[name] != null);
  const rows = [row(["Unit value", "", money.format(a.value)])];
  for (const [name, label] of parts) rows.push(row([`− ${label}`, pct(a[name]), `− ${money.format(a[name] * a.value)}`]));
  const summed = parts.reduce((total, [name]) => total + a[name], 0);
  if (Math.abs(summed - a.haircut) > 5e-4) {
    rows.push(row([a.haircut > summed ? "+ raised to the policy's minimum haircut" : "+ capped at the policy's maximum haircut",
      pct(a.haircut - summed), `${a.haircut > summed ? "− " : "+ "}${money.format(Math.abs(a.haircut - summed) * a.value)}`]));
  }
  rows.push(row(["= Pledge unit price", pct(1 - a.haircut), money.format(a.pledge_unit_price)]));
  rows[rows.length - 1].className = "total";
  for (const d of a.haircut_drivers || []) {
    const tr = row([`   moved by ${featureText(d.feature)}`, `${d.effect >= 0 ? "+" : "−"}${pct(Math.abs(d.effect))}`, ""]);
    tr.className = "driver";
    rows.splice(rows.length - 1, 0, tr);
  }
  steps.replaceChildren(...rows);
  const box = $("r-comparables");
  box.replaceChildren();
  for (const c of a.comparables || []) {
    const card = document.createElement("div");
    card.className = "comparable";
    const img = document.createElement("img");
    img.alt = c.title || c.spu_id;
    card.append(img, text("p", c.title || c.spu_id, "title"), text("p", `${money.format(c.price)} · similarity ${c.similarity.toFixed(2)}`, "muted"));
    box.append(card);
    if (c.image_url) thumbnail(img, c.image_url); else img.hidden = true;
  }
  rangeChart($("r-range"), a);
  show($("price-result"), true);
}

// Where the value sits: its interval as a band, the value and the pledge price as marks, the comparables'
// prices as dots; log-scaled, since a wide interval spans several times the value.
function rangeChart(svg, a) {
  const svgEl = (tag, attrs) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  };
  const comps = (a.comparables || []).filter((c) => c.price > 0);
  const all = [a.value_low, a.value_high, a.value, a.pledge_unit_price, ...comps.map((c) => c.price)].filter((v) => v > 0);
  const lo = Math.log(Math.min(...all) / 1.2), hi = Math.log(Math.max(...all) * 1.2);
  const x = (v) => (20 + 560 * (Math.log(v) - lo) / (hi - lo || 1)).toFixed(1);
  const label = (v, y, anchor, words) => {
    const t = svgText(x(v), y, words ? `${words} ${money.format(v)}` : money.format(v));
    t.setAttribute("text-anchor", anchor);
    return t;
  };
  svg.replaceChildren(
    svgEl("rect", { x: x(a.value_low), y: 30, width: Math.max(1, x(a.value_high) - x(a.value_low)), height: 18, class: "band" }),
    svgEl("line", { x1: x(a.value), x2: x(a.value), y1: 24, y2: 54, class: "value" }),
    label(a.value, 18, "middle", "value"),
    label(a.value_low, 64, "end"), label(a.value_high, 64, "start"),
    ...(a.pledge_unit_price > 0 ? [svgEl("line", { x1: x(a.pledge_unit_price), x2: x(a.pledge_unit_price), y1: 26, y2: 52,
      class: "pledge" }), label(a.pledge_unit_price, 92, "middle", "pledge")] : []),
    ...comps.map((c) => {
      const dot = svgEl("circle", { cx: x(c.price), cy: 78, r: 4, class: "comparable-price" });
      dot.append(svgEl("title", {}));
      dot.firstChild.textContent = `${c.title || c.spu_id}: ${money.format(c.price)}`;
      return dot;
    }));
}

// <img src> cannot carry the key header: fetch the thumbnail and show it from a blob URL.
async function thumbnail(img, url) {
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) { img.hidden = true; return; }
    img.src = URL.createObjectURL(await response.blob());
  } catch (_) {
    img.hidden = true;
  }
}

// -- the book --------------------------------------------------------------------------------
async function loadBook() {
  show($("book-error"), false);
  show($("detail"), false);
  try {
    const [sweep] = await Promise.all([api("/sweeps/latest"), settings]);
    const s = sweep.summary;
    $("b-asof").textContent = `as of ${sweep.as_of}`;
    $("b-totals").textContent = `${count.format(s.positions)} positions · loans ${money.format(s.loan_amount)} · ` +
      `collateral ${money.format(s.collateral_value)} · ${count.format(s.alerts)} alerts raised`;
    $("b-grades").replaceChildren(text("span", "Grades:", "label"),
      ...Object.entries(s.grades).map(([g, n]) => text("span", `${g}: ${n}`, "pill")));
    $("b-actions").replaceChildren(text("span", "Actions:", "label"),
      ...Object.entries(s.actions).map(([a, n]) => text("span", `${a}: ${n}`, `pill action-${a}`)));
    $("b-report").onclick = (event) => { event.preventDefault(); openReport(sweep.report_url); };
    $("b-report").href = sweep.report_url;
    $("b-backtest").onclick = (event) => { event.preventDefault(); openReport("/reports/backtest"); };
    exposureChart($("b-exposure"), sweep.exposure_by_grade || []);
    book = [...sweep.worst].sort((x, y) => y.amount_at_risk - x.amount_at_risk);
    fillFilter($("f-action"), book.map((w) => w.action));
    fillFilter($("f-grade"), book.map((w) => w.grade));
    showBook();
    show($("book"), true);
    followBook(sweep.completed_at);
  } catch (err) {
    show($("book"), false);
    fail($("book-error"), err);
  }
}

// -- the live book: market updates between sweeps ----------------------------------------------
// Every few seconds the page asks for positions whose grade or action a market update changed since
// the sweep it shows (GET /positions/changes?since=), and updates their rows in place. Polling works
// the same whichever of the service's workers answers; a stream would tie the page to one of them.
const LIVE_EVERY_MS = 3000;
const live = { since: null, timer: null, changed: 0, last: null };
function followBook(sweepCompletedAt) {
  live.since = sweepCompletedAt;
  live.changed = 0;
  live.last = null;
  $("b-live").textContent = "Live: following market updates.";
  clearTimeout(live.timer);
  live.timer = setTimeout(pollChanges, 0);
}
async function pollChanges() {
  if ($("book-view").hidden) return;  // the price view is shown: route() starts again on the way back
  try {
    let page;
    do {
      page = await api(`/positions/changes?since=${encodeURIComponent(live.since)}&limit=500`);
      if (page.changes.length) {
        page.changes.forEach(applyChange);
        live.since = page.cursor;
        live.changed += page.changes.length;
        live.last = page.changes[page.changes.length - 1].created_at;
      }
    } while (page.more);
    if (live.last) {
      fillFilter($("f-action"), book.map((w) => w.action));
      fillFilter($("f-grade"), book.map((w) => w.grade));
      book.sort((x, y) => y.amount_at_risk - x.amount_at_risk);
      showBook();
      $("b-live").textContent = `Live: ${count.format(live.changed)} changes from market updates since the sweep ` +
        `(latest ${live.last.replace("T", " ")}).`;
    }
  } catch (err) {
    $("b-live").textContent = `Live updates paused: ${err.message}. Retrying.`;
  }
  live.timer = setTimeout(pollChanges, LIVE_EVERY_MS);
}
function applyChange(c) {
  let w = book.find((x) => x.position_id === c.position_id);
  if (!w) {
    if (c.action === "ok") return;  // the list holds the positions at risk
    w = { position_id: c.position_id, spu_id: c.spu_id, title: null };
    book.push(w);
  }
  for (const key of ["unit_value", "collateral_value", "loan_amount", "amount_at_risk", "ltv", "health", "grade",
    "action", "reasons", "reason_text", "p_loss"]) w[key] = c[key];
  w.live = c.created_at;
}

// One bar per grade: its loans, and inside it the part at risk.
function exposureChart(svg, grades) {
  const most = Math.max(...grades.map((g) => g.loan_amount || 0), 1);
  const bar = (y, width, cls) => {
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    r.setAttribute("x", 40); r.setAttribute("y", y); r.setAttribute("height", 16);
    r.setAttribute("width", Math.max(width, 0.5).toFixed(1)); r.setAttribute("class", cls);
    return r;
  };
  svg.setAttribute("viewBox", `0 0 600 ${Math.max(30, 24 * grades.length + 6)}`);
  svg.replaceChildren(...grades.flatMap((g, k) => {
    const y = 4 + 24 * k, width = 330 * (g.loan_amount || 0) / most;
    const risk = g.amount_at_risk > 0 ? [bar(y, 330 * g.amount_at_risk / most, "at-risk")] : [];
    return [svgText(12, y + 13, g.grade), bar(y, width, "loans"), ...risk,
      svgText(48 + width, y + 13, `${money.format(g.loan_amount || 0)} in ${count.format(g.positions)} · ` +
        `${money.format(g.amount_at_risk)} at risk`)];
  }));
}

let book = [];
function fillFilter(select, values) {
  const keep = select.value;
  select.replaceChildren(new Option("all", ""), ...[...new Set(values)].sort().map((v) => new Option(v, v)));
  select.value = [...select.options].some((o) => o.value === keep) ? keep : "";
}
function shownBook() {
  const action = $("f-action").value, grade = $("f-grade").value;
  return book.filter((w) => (!action || w.action === action) && (!grade || w.grade === grade));
}
function showBook() {
  const rows = shownBook();
  $("b-worst").tBodies[0].replaceChildren(...rows.map((w) => {
    const link = document.createElement("a");
    link.href = `#position/${encodeURIComponent(w.position_id)}`;
    link.textContent = w.position_id;
    const title = text("span", w.title || w.spu_id);
    title.title = w.spu_id;
    const action = text("span", w.action);
    if (w.live) action.append(" ", text("span", "updated", "live-badge"));
    const tr = row([link, title, money.format(w.loan_amount ?? 0), money.format(w.amount_at_risk),
      ltvText(w.ltv), `${w.health.toFixed(0)} (${w.grade})`, action, (w.reason_text || []).join(" ")]);
    if (w.live) {
      tr.classList.add("live");
      tr.title = `Re-scored by a market update at ${w.live.replace("T", " ")}`;
    }
    return tr;
  }));
  $("b-count").textContent = `${rows.length} of ${book.length} positions, the largest amount at risk first`;
}
$("f-action").addEventListener("change", showBook);
$("f-grade").addEventListener("change", showBook);
$("b-csv").addEventListener("click", () => {
  const columns = ["position_id", "spu_id", "title", "loan_amount", "collateral_value", "amount_at_risk", "ltv",
    "health", "grade", "action"];
  const quote = (v) => (v == null ? "" : /[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));
  const lines = [columns.concat("reasons").join(","),
    ...shownBook().map((w) => columns.map((c) => quote(w[c])).concat(quote((w.reason_text || []).join(" "))).join(","))];
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = `book-${$("b-asof").textContent.replace("as of ", "")}.csv`;
  link.click();
});

// The report needs the key too: fetch it, then open it as a blob in a new tab.
async function openReport(url) {
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) throw new Error(explain(response.status, null, await response.text()));
    window.open(URL.createObjectURL(await response.blob()), "_blank", "noopener");
  } catch (err) {
    fail($("book-error"), err);
  }
}

async function loadPosition(id) {
  show($("book-error"), false);
  try {
    const h = await api(`/positions/${encodeURIComponent(id)}/health`);
    const l = h.latest;
    $("d-id").textContent = id;
    const title = (book.find((w) => w.spu_id === l.spu_id) || {}).title;
    const loan = l.ltv == null ? null : l.ltv * l.collateral_value;
    $("d-latest").textContent = `${title || "SPU " + l.spu_id} · health ${l.health.toFixed(0)} (${l.grade}) · ` +
      `${l.action} · loan ${loan == null ? "–" : money.format(loan)} · collateral ${money.format(l.collateral_value)} · ` +
      `LTV ${ltvText(l.ltv)} · ${l.days_to_liquidate == null ? "no recent sales" :
        `${Math.round(l.days_to_liquidate)} days to sell at today's pace`}`;
    plot($("d-price"), h.market.map((m) => [m.date, m.price]), (v) => money.format(v));
    plot($("d-sales"), everyDay(h.market.map((m) => [m.date, m.units_sold])), (v) => count.format(v));
    plot($("d-ltv"), h.history.map((r) => [r.as_of, r.ltv]), ltvText);
    const cause = (a) => (a.trigger === "market" ? " after a market update" : "");
    $("d-alerts").replaceChildren(...(h.alerts.length ? h.alerts.map((a) => li(`${a.as_of}: ${a.action}${cause(a)} ` +
      `(was ${a.previous_action || "–"}): ${(a.reason_text || []).join(" ")}`)) : [li("none")]));
    show($("detail"), true);
    $("detail").scrollIntoView({ block: "start" });
  } catch (err) {
    fail($("book-error"), err);
  }
}


// A line through [date, value] points, spaced by date, with the first and last date under it and the
// highest and lowest value beside it; gaps (null) are skipped. One point is drawn as a dot and said.
function plot(svg, series, format) {
  const points = series.filter(([, v]) => v != null && Number.isFinite(v)).map(([d, v]) => [Date.parse(d), v, d]);
  svg.replaceChildren();
  if (!points.length) { svg.append(svgText(10, 60, "no data")); return; }
  const ys = points.map(([, v]) => v);
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const t0 = points[0][0], t1 = points[points.length - 1][0], width = t1 - t0 || 1;
  const x = (t) => (48 + 264 * (t - t0) / width).toFixed(1), y = (v) => (100 - 85 * (v - lo) / span).toFixed(1);
  if (points.length === 1) {
    const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    dot.setAttribute("cx", 180); dot.setAttribute("cy", 58); dot.setAttribute("r", 4);
    svg.append(dot, svgText(60, 85, `one sweep so far: ${format(points[0][1])} on ${points[0][2]}`));
    return;
  }
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map(([t, v]) => `${x(t)},${y(v)}`).join(" "));
  const last = svgText(312, 116, points[points.length - 1][2]);
  last.setAttribute("text-anchor", "end");
  svg.append(line, svgText(2, 18, format(hi)), svgText(2, 102, format(lo)), svgText(48, 116, points[0][2]), last);
}

// Daily units with the days without a sale as zeros (the market holds only the days something sold).
function everyDay(series) {
  if (!series.length) return series;
  const sold = new Map(series.map(([d, v]) => [d, v]));
  const out = [];
  for (let t = Date.parse(series[0][0]); t <= Date.parse(series[series.length - 1][0]); t += 86400000) {
    const day = new Date(t).toISOString().slice(0, 10);
    out.push([day, sold.get(day) ?? 0]);
  }
  return out;
}

function svgText(x, y, content) {
  const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
  t.setAttribute("x", x);
  t.setAttribute("y", y);
  t.textContent = content;
  return t;
}

const HAIRCUT_PARTS = [
  ["haircut_base", "base haircut for the category"],
  ["haircut_market", "market risk: the price may fall before the stock is sold"],
  ["haircut_liquidity", "liquidity: time needed to sell this quantity"],
  ["haircut_uncertainty", "model uncertainty: the value's interval"],
  ["haircut_recovery", "forced-sale loss, learned from past recoveries"],
  ["haircut_value_gap", "value above what the market recently paid"],
];
function featureText(feature) {
  return feature.replaceAll("_", " ");
}

// -- small DOM helpers -----------------------------------------------------------------------
function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}
function li(content) { return text("li", content); }
function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

// -- views -----------------------------------------------------------------------------------
function route() {
  const hash = location.hash.slice(1);
  const book = hash.startsWith("book") || hash.startsWith("position/");
  show($("price-view"), !book);
  show($("book-view"), book);
  $("nav-price").classList.toggle("active", !book);
  $("nav-book").classList.toggle("active", book);
  if (hash.startsWith("position/")) {
    if ($("book").hidden) loadBook();
    loadPosition(decodeURIComponent(hash.slice("position/".length)));
  } else if (book) {
    loadBook();
  }
}
window.addEventListener("hashchange", route);
showKeyState();
route();
