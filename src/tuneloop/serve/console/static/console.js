// tuneloop web console: plain JavaScript, no build step, no third-party code.
// Every piece of data is put on the page as text (textContent, text nodes: the h() helper below), never as HTML.
// The API key lives in sessionStorage (this tab only) and travels as a Bearer header, never in a URL.
"use strict";

const KEY = "tuneloop.console.key";
const $ = (id) => document.getElementById(id);
let gateway = null; // {key, models, routes} from /admin/gateway
let liveTimer = null;

// ------------------------------------------------------------------ DOM helpers

// h("div", {class: "x", onclick: fn}, "text", child) -> element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function clear(el) { el.replaceChildren(); return el; }
function say(el, text, kind) { el.textContent = text || ""; el.className = kind || ""; }
function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(digits);
  return String(v);
}
function ms(v) { return v === null || v === undefined ? "–" : `${(v * 1000).toFixed(v < 0.1 ? 1 : 0)} ms`; }
function pct(v) { return v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`; }
function when(t) {
  if (!t) return "";
  const d = typeof t === "number" ? new Date(t > 1e12 ? t : t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}
function table(el, headers, rows, caption) {
  clear(el);
  if (caption) el.append(h("caption", {}, caption));
  el.append(h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))));
  const body = h("tbody");
  for (const r of rows) {
    body.append(h("tr", {}, r.map((c) => (c instanceof Node ? h("td", {}, c)
      : h("td", typeof c === "number" ? { class: "num" } : {}, fmt(c))))));
  }
  if (!rows.length) body.append(h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "nothing yet")));
  el.append(body);
  return el;
}

// ------------------------------------------------------------------ API

function key() { return sessionStorage.getItem(KEY); }

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${key()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) { logout("Your key was refused (401): log in again."); }
  return { status: res.status, ok: res.ok, data, headers: res.headers };
}

function errorText(r) {
  const m = r.data && r.data.error && r.data.error.message;
  return `${r.status}: ${m || "request failed"}`;
}

// ------------------------------------------------------------------ login and navigation

async function login(secret) {
  sessionStorage.setItem(KEY, secret);
  const r = await api("GET", "/admin/gateway");
  if (!r.ok) {
    sessionStorage.removeItem(KEY);
    say($("login-error"), r.status === 403 ? "This key lacks the admin scope." : errorText(r), "error");
    return false;
  }
  gateway = r.data;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `key ${gateway.key.name} (${gateway.key.scopes.join(", ")})`;
  if (!gateway.key.scopes.includes("inference")) {
    say($("notice"), "This key has no inference scope: the playground cannot chat with it.", "notice");
  }
  fillModelSelects();
  route();
  return true;
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  gateway = null;
  stopLive();
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  say($("login-error"), message || "", "error");
  $("login-key").value = "";
  $("login-key").focus();
}

const PAGES = { playground: showPlayground, review: loadReview, models: loadModels, live: startLive };

function route() {
  if (!gateway) return;
  const page = (location.hash || "#playground").slice(1);
  const name = PAGES[page] ? page : "playground";
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== `page-${name}`;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (name !== "live") stopLive();
  PAGES[name]();
}

// ------------------------------------------------------------------ playground

let conversation = []; // single mode: the conversation so far (messages)
let aborter = null;
let pending = null; // compare mode: {a: {id, model}, b: {id, model}}

function servedNames() {
  return gateway ? [...gateway.models.map((m) => m.name), ...gateway.routes.map((r) => r.name)] : [];
}

function fillModelSelects() {
  for (const [id, pick] of [["pg-model-a", 0], ["pg-model-b", 1]]) {
    const sel = clear($(id));
    const names = servedNames();
    for (const n of names) sel.append(h("option", { value: n }, n));
    if (names.length > pick) sel.value = names[pick];
  }
}

function mode() { return document.querySelector('input[name="mode"]:checked').value; }

function showPlayground() {
  const compare = mode() === "compare";
  for (const el of document.querySelectorAll(".compare-only")) el.hidden = !compare;
  $("pg-model-a-label").textContent = compare ? "Model A" : "Model";
  $("pg-single").hidden = compare;
  $("pg-compare").hidden = !compare;
  if (!compare) $("pg-vote").hidden = true;
}

function sampling() {
  const body = {
    temperature: Number($("pg-temperature").value),
    top_p: Number($("pg-top-p").value),
    max_tokens: Math.max(1, Math.round(Number($("pg-max-tokens").value) || 128)),
  };
  if ($("pg-seed").value !== "") body.seed = Math.round(Number($("pg-seed").value));
  return { ...body, ...structured() };
}

// tools, tool_choice and response_format from the playground's fields; bad JSON throws, naming the field
function structured() {
  const out = {};
  const parse = (id, what) => {
    const text = $(id).value.trim();
    if (!text) return null;
    try { return JSON.parse(text); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
  };
  const tools = parse("pg-tools", "Tools");
  if (tools) { out.tools = tools; out.tool_choice = $("pg-tool-choice").value; }
  const schema = parse("pg-schema", "JSON schema");
  if (schema) out.response_format = { type: "json_schema", json_schema: { name: "playground", schema } };
  return out;
}

function bubble(role, text) {
  const body = h("div", { class: "text" }, text || "");
  const meta = h("div", { class: "meta" });
  const el = h("div", { class: `msg ${role}` }, h("div", { class: "role" }, role), body, meta);
  return { el, body, meta };
}

// POST /v1/chat/completions with stream: true; calls onText for every delta; returns {id, text, variant, version}.
async function streamChat(model, messages, onText, signal) {
  let options;
  try { options = sampling(); } catch (e) { return { id: null, text: "", error: e.message }; }
  const res = await fetch("/v1/chat/completions", {
    method: "POST", signal, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    headers: { Authorization: `Bearer ${key()}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages, stream: true, ...options }),
  });
  const calls = [];  // tool calls assembled from delta.tool_calls, shown after the text
  const info = { id: null, text: "", variant: res.headers.get("X-Tuneloop-Variant"),
                 version: res.headers.get("X-Tuneloop-Model-Version"), error: null };
  if (!res.ok) {
    let m = "";
    try { m = (await res.json()).error.message; } catch (e) { m = res.statusText; }
    info.error = `${res.status}: ${m}`;
    return info;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return info;
        const chunk = JSON.parse(data);
        if (chunk.error) { info.error = chunk.error.message; return info; }
        info.id = chunk.id || info.id;
        for (const c of chunk.choices || []) {
          const piece = (c.delta && c.delta.content) || "";
          if (piece) { info.text += piece; onText(info.text); }
          for (const t of (c.delta && c.delta.tool_calls) || []) {
            const call = calls[t.index] || (calls[t.index] = { name: "", arguments: "" });
            if (t.function && t.function.name) call.name = t.function.name;
            if (t.function && t.function.arguments) call.arguments += t.function.arguments;
            const shown = calls.map((k) => `[tool call] ${k.name}(${k.arguments})`).join("\n");
            onText(info.text ? `${info.text}\n${shown}` : shown);
          }
        }
      }
    }
  }
  return info;
}

function describe(info, model) {
  const parts = [`model ${model}`];
  if (info.variant && info.variant !== "default") parts.push(`variant ${info.variant}`);
  if (info.version) parts.push(`version ${info.version}`);
  if (info.id) parts.push(`response ${info.id}`);
  return parts.join(" · ");
}

async function answerInto(container, model, messages, signal) {
  const b = bubble("assistant", "");
  b.el.setAttribute("aria-busy", "true");
  container.append(b.el);
  const info = await streamChat(model, messages, (text) => { b.body.textContent = text; }, signal)
    .catch((e) => ({ error: e.name === "AbortError" ? "stopped" : String(e), text: "" }));
  b.el.removeAttribute("aria-busy");
  b.meta.textContent = info.error ? `error ${info.error}` : describe(info, model);
  if (info.error) b.meta.className = "meta error";
  b.el.dataset.responseId = info.id || "";
  return info;
}

function baseMessages() {
  const system = $("pg-system").value.trim();
  return system ? [{ role: "system", content: system }] : [];
}

async function send(ev) {
  ev.preventDefault();
  const prompt = $("pg-prompt").value;
  if (!prompt.trim()) return;
  aborter = new AbortController();
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;
  say($("pg-status"), "generating…");
  try {
    if (mode() === "compare") await sendCompare(prompt);
    else await sendSingle(prompt);
  } finally {
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
    aborter = null;
  }
}

async function sendSingle(prompt) {
  const model = $("pg-model-a").value;
  const box = $("pg-single");
  conversation.push({ role: "user", content: prompt });
  box.append(bubble("user", prompt).el);
  $("pg-prompt").value = "";
  const info = await answerInto(box, model, [...baseMessages(), ...conversation], aborter.signal);
  if (info.error) { conversation.pop(); say($("pg-status"), info.error, "error"); return; }
  conversation.push({ role: "assistant", content: info.text });
  say($("pg-status"), "done", "ok");
}

async function sendCompare(prompt) {
  const a = $("pg-model-a").value, b = $("pg-model-b").value;
  const messages = [...baseMessages(), { role: "user", content: prompt }];
  pending = null;
  $("pg-vote").hidden = true;
  for (const [id, model, title] of [["pg-a", a, "pg-a-title"], ["pg-b", b, "pg-b-title"]]) {
    clear($(id)).append(bubble("user", prompt).el);
    $(title).textContent = `${id === "pg-a" ? "A" : "B"}: ${model}`;
  }
  const [ia, ib] = await Promise.all([answerInto($("pg-a"), a, messages, aborter.signal),
                                      answerInto($("pg-b"), b, messages, aborter.signal)]);
  if (ia.error || ib.error) { say($("pg-status"), "one of the answers failed: no vote possible", "error"); return; }
  pending = { a: { id: ia.id, model: a }, b: { id: ib.id, model: b } };
  $("pg-vote").hidden = false;
  say($("pg-status"), "done: mark the better answer", "ok");
  $("pg-vote-a").focus();
}

async function vote(better) {
  if (!pending) return;
  const worse = better === "a" ? "b" : "a";
  const comment = $("pg-vote-comment").value.trim();
  const r = await api("POST", "/admin/preferences",
                      { chosen: pending[better].id, rejected: pending[worse].id, comment: comment || null });
  if (!r.ok) { say($("pg-status"), `vote not stored: ${errorText(r)}`, "error"); return; }
  say($("pg-status"),
      `Vote stored: ${better.toUpperCase()} (${pending[better].model}) preferred — feedback #${r.data.chosen.id} and #${r.data.rejected.id}, a preference pair for the loop.`,
      "ok");
  pending = null;
  $("pg-vote").hidden = true;
  $("pg-vote-comment").value = "";
}

// ------------------------------------------------------------------ feedback review

const checksCache = new Map();

async function checksFor(model, cycle) {
  const k = `${model}/${cycle}`;
  if (!checksCache.has(k)) {
    const r = await api("GET", `/admin/loop/${encodeURIComponent(model)}/cycles/${cycle}/checks`);
    checksCache.set(k, r.ok ? r.data : null);
  }
  return checksCache.get(k);
}

async function loadReview(ev) {
  if (ev) ev.preventDefault();
  const params = new URLSearchParams({ status: $("rv-status").value });
  if ($("rv-model").value.trim()) params.set("model", $("rv-model").value.trim());
  const r = await api("GET", `/admin/review?${params}`);
  const box = clear($("rv-items"));
  $("rv-all").checked = false;
  if (!r.ok) { say($("rv-status-line"), errorText(r), "error"); return; }
  const items = r.data.data;
  say($("rv-status-line"), `${items.length} ${$("rv-status").value} item(s)`);
  checksCache.clear();
  for (const item of items) box.append(await reviewCard(item));
}

function checksView(item, checks) {
  const dl = h("dl", { class: "kv" });
  const add = (k, v) => dl.append(h("dt", {}, k), h("dd", {}, v));
  add("source", item.source);
  const p = checks && checks.proposals[item.response_id];
  if (p) {
    add("raters", `${fmt(p.raters)} · agreement ${fmt(p.agreement)} · mean rating ${fmt(p.mean_rating)}`);
    if (p.variant || p.model_version) add("answered by", [p.variant, p.model_version].filter(Boolean).join(" · "));
  }
  if (checks) {
    add("automatic checks", h("span", {}, ...["injection", "abuse", "size", "PII", "duplicates", "conflicts"]
      .map((c) => h("span", { class: "badge pass" }, `${c} ✓`)).flatMap((b) => [b, " "])));
    const pii = Object.entries(checks.pii_redacted || {});
    if (pii.length) add("PII redacted in this cycle", pii.map(([k, v]) => `${k} ×${v}`).join(", "));
    const rej = Object.entries(checks.rejections || {});
    add(`cycle ${item.cycle} rejections`, rej.length ? rej.map(([k, v]) => `${k} ×${v}`).join(", ") : "none");
  } else {
    add("automatic checks", "passed (details unavailable)");
  }
  return dl;
}

async function reviewCard(item) {
  const checks = await checksFor(item.model, item.cycle);
  const status = h("span", { class: "muted", role: "status" });
  const select = h("input", { type: "checkbox", class: "rv-select", value: String(item.id),
                              "aria-label": `select item ${item.id}`, disabled: item.status !== "pending" });
  const answer = h("textarea", { rows: 3, id: `rv-answer-${item.id}`, hidden: true }, item.edited !== null ? item.edited : item.answer);
  const answerLabel = h("label", { for: `rv-answer-${item.id}`, hidden: true }, "Answer to train on");
  const reason = h("input", { type: "text", id: `rv-reason-${item.id}`, maxlength: 2000 });
  const card = h("article", { class: "card", "data-item": String(item.id), "aria-labelledby": `rv-h-${item.id}` },
    h("h3", { id: `rv-h-${item.id}` }, select, `#${item.id}`, h("span", { class: "badge" }, item.model),
      h("span", { class: "badge" }, `cycle ${item.cycle}`), h("span", { class: "badge" }, item.status)),
    h("div", { class: "transcript" }, item.prompt.map((m) => bubble(m.role, m.content).el)),
    h("div", { class: "msg assistant" }, h("div", { class: "role" }, "train on"),
      h("div", { class: "text rv-answer" }, item.edited !== null ? item.edited : item.answer)),
    item.rejected_answer ? h("div", { class: "msg" }, h("div", { class: "role" }, "instead of"),
      h("div", { class: "text" }, item.rejected_answer)) : null,
    item.reason ? h("p", {}, `reason: ${item.reason}`) : null,
    checksView(item, checks), answerLabel, answer, status);
  if (item.status === "pending") {
    const decide = async (path, body) => {
      const r = await api("POST", `/admin/review/${item.id}/${path}`, body);
      if (!r.ok) { say(status, errorText(r), "error"); return false; }
      say(status, `${r.data.status} by ${r.data.reviewer}`, "ok");
      for (const b of card.querySelectorAll("button, input, textarea")) b.disabled = true;
      return true;
    };
    const edit = h("button", { type: "button", class: "secondary", onclick: () => {
      answer.hidden = false; answerLabel.hidden = false; approveEdited.hidden = false; answer.focus();
    } }, "Edit");
    const approveEdited = h("button", { type: "button", hidden: true,
                                        onclick: () => decide("approve", { answer: answer.value }) }, "Approve edited");
    card.append(h("div", { class: "row" },
      h("button", { type: "button", onclick: () => decide("approve") }, `Approve #${item.id}`),
      edit, approveEdited,
      h("label", { for: reason.id }, "Reason", reason),
      h("button", { type: "button", class: "danger", onclick: () => decide("reject", { reason: reason.value || null }) },
        `Reject #${item.id}`)));
  }
  return card;
}

async function bulk(action) {
  const ids = [...document.querySelectorAll(".rv-select:checked")].map((c) => c.value);
  if (!ids.length) { say($("rv-status-line"), "select items first", "error"); return; }
  const body = action === "reject" ? { reason: $("rv-bulk-reason").value || null } : undefined;
  let done = 0;
  const failed = [];
  for (const id of ids) {
    const r = await api("POST", `/admin/review/${id}/${action}`, body);
    if (r.ok) done += 1; else failed.push(`#${id} ${errorText(r)}`);
  }
  await loadReview();
  say($("rv-status-line"), `${action === "approve" ? "approved" : "rejected"} ${done} item(s)` +
      (failed.length ? `; failed: ${failed.join("; ")}` : ""), failed.length ? "error" : "ok");
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const r = await api("GET", "/admin/registry/models");
  if (!r.ok) { table($("md-list"), ["error"], [[errorText(r)]], "Registered models"); }
  else {
    table($("md-list"), ["name", "latest", "versions", "kind", "aliases", "description", ""],
      r.data.data.map((m) => [m.name, m.latest, m.versions, m.kind || "",
        Object.entries(m.aliases).map(([a, v]) => `${a} → ${v}`).join(", "), m.description,
        h("button", { type: "button", class: "secondary", onclick: () => showModel(m.name) }, `Open ${m.name}`)]),
      "Registered models");
  }
  await loadRoutes();
}

const LINEAGE = ["kind", "base", "base_model.reference", "dataset.fingerprint", "config.sha256", "parent",
                 "git_commit", "objective", "method"];

async function showModel(name) {
  const box = clear($("md-detail"));
  const r = await api("GET", `/admin/registry/models/${encodeURIComponent(name)}`);
  if (!r.ok) { box.append(h("p", { class: "error" }, errorText(r))); return; }
  const m = r.data;
  box.append(h("h2", { id: "md-model-title", tabindex: "-1" }, `${m.name}`));
  if (m.description) box.append(h("p", {}, m.description));
  const aliases = h("dl", { class: "kv", id: "md-aliases" });
  for (const [a, v] of Object.entries(m.aliases)) aliases.append(h("dt", {}, a), h("dd", {}, `version ${v}`));
  box.append(h("h3", {}, "Aliases"), aliases);
  const versions = h("table", { id: "md-versions" });
  table(versions, ["version", "aliases", "created", "lineage", "metrics"], m.versions.map((v) => [
    v.version, v.aliases.join(", "), when(v.created),
    h("details", {}, h("summary", {}, LINEAGE.filter((k) => v.lineage[k]).slice(0, 2).map((k) => `${k}: ${v.lineage[k]}`).join("; ") || "lineage"),
      kv(v.lineage)),
    kv(v.metrics)]), "Versions (newest first)");
  box.append(h("div", { class: "table-wrap" }, versions));
  box.append(aliasForms(m));
  const hist = h("table", { id: "md-history" });
  table(hist, ["time", "alias", "action", "version", "previous", "user"],
    [...m.history].reverse().map((e) => [e.time, e.alias, e.action, e.version ?? "–", e.previous ?? "–", e.user || ""]),
    "Alias history (newest first)");
  box.append(h("div", { class: "table-wrap" }, hist));
  $("md-model-title").focus();
}

function kv(obj) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of Object.entries(obj || {})) dl.append(h("dt", {}, k), h("dd", {}, fmt(v, 4)));
  return dl;
}

function aliasForms(m) {
  const versionSel = h("select", { id: "md-promote-version" }, m.versions.map((v) => h("option", { value: String(v.version) }, String(v.version))));
  const promoteAlias = h("input", { id: "md-promote-alias", type: "text", value: "production", required: true });
  const rollbackAlias = h("input", { id: "md-rollback-alias", type: "text", value: "production", required: true });
  const reload = h("input", { id: "md-reload", type: "checkbox", checked: true });
  return h("div", { class: "panel" },
    h("h3", {}, "Move an alias"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault();
      moveAlias(m.name, "promote", { version: Number(versionSel.value), alias: promoteAlias.value, reload: reload.checked }); } },
      h("label", { for: "md-promote-version" }, "Version", versionSel),
      h("label", { for: "md-promote-alias" }, "Alias", promoteAlias),
      h("button", { type: "submit", id: "md-promote" }, "Promote…")),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault();
      moveAlias(m.name, "rollback", { alias: rollbackAlias.value, reload: reload.checked }); } },
      h("label", { for: "md-rollback-alias" }, "Alias", rollbackAlias),
      h("button", { type: "submit", id: "md-rollback", class: "danger" }, "Roll back…")),
    h("label", {}, reload, "Reload the gateway afterwards (served NAME@alias entries follow)"));
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "";
    d.showModal();
    $("confirm-cancel").focus();
  });
}

async function moveAlias(name, action, body) {
  const path = `/admin/registry/models/${encodeURIComponent(name)}/${action}`;
  const preview = await api("POST", path, body);
  if (preview.status !== 409 || !preview.data.confirm) {
    say($("md-status"), preview.ok ? "done without confirmation?" : errorText(preview), preview.ok ? "" : "error");
    return;
  }
  const c = preview.data.confirm;
  const ok = await confirmDialog(`${action === "rollback" ? "Roll back" : "Promote"} ${c.name}@${c.alias}: ` +
    `version ${c.from ?? "(none)"} → version ${c.to}?`);
  if (!ok) { say($("md-status"), "cancelled"); return; }
  const r = await api("POST", path, { ...body, confirm_token: c.confirm_token });
  if (!r.ok) { say($("md-status"), errorText(r), "error"); return; }
  say($("md-status"), `${c.name}@${c.alias} now points at version ${r.data.to}` +
      (r.data.reloaded ? ` (reloaded: ${r.data.reloaded.join(", ") || "nothing changed"})` : ""), "ok");
  await showModel(name);
  await loadModels();
}

async function loadRoutes() {
  const box = clear($("md-routes"));
  const r = await api("GET", "/admin/routes");
  if (!r.ok) { box.append(h("p", { class: "error" }, errorText(r))); return; }
  if (!r.data.data.length) box.append(h("p", { class: "muted" }, "No routes: every served name is a single model."));
  for (const route of r.data.data) {
    const inputs = route.variants.map((v, i) => h("input", { type: "number", min: 0, step: "any", value: String(v.weight),
      id: `rt-${route.name}-${i}`, "data-model": v.model }));
    const form = h("form", { class: "panel", onsubmit: async (e) => {
      e.preventDefault();
      const variants = inputs.map((x) => ({ model: x.dataset.model, weight: Number(x.value) }));
      const res = await api("PUT", `/admin/routes/${encodeURIComponent(route.name)}`,
                            { variants, shadow: route.shadow });
      say($("md-status"), res.ok ? `route ${route.name} updated` : errorText(res), res.ok ? "ok" : "error");
      if (res.ok) loadRoutes();
    } }, h("h3", {}, `Route ${route.name}`),
      h("div", { class: "row" }, route.variants.map((v, i) => h("label", { for: inputs[i].id },
        `${v.model} (${pct(v.weight / route.variants.reduce((s, x) => s + x.weight, 0) || 0)})`, inputs[i]))),
      route.shadow ? h("p", {}, `shadow: ${route.shadow}`) : null,
      h("button", { type: "submit" }, `Save weights of ${route.name}`));
    box.append(form);
  }
}

// ------------------------------------------------------------------ live

function startLive() {
  refreshLive();
  stopLive();
  if ($("lv-auto").checked) liveTimer = setInterval(refreshLive, 5000);
}
function stopLive() { if (liveTimer) clearInterval(liveTimer); liveTimer = null; }

async function refreshLive() {
  const w = Math.max(5, Number($("lv-window").value) || 60);
  const r = await api("GET", `/admin/metrics/summary?window_s=${w}`);
  if (r.ok) {
    const s = r.data;
    const rate = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));
    table($("lv-variants"), ["model", "variant", "QPS", "requests", "latency p50 / p90 / p99", "TTFT p50 / p90",
                             "tokens/s", "errors", "429s", "queue p90"],
      s.variants.map((v) => [v.model, v.variant, rate(v.qps), v.requests ?? 0,
        v.latency_s ? `${ms(v.latency_s.p50)} / ${ms(v.latency_s.p90)} / ${ms(v.latency_s.p99)}` : "–",
        v.ttft_s ? `${ms(v.ttft_s.p50)} / ${ms(v.ttft_s.p90)}` : "–", rate(v.tokens_per_s),
        pct(v.error_rate), pct(v.rate_limited_rate), v.queue_s ? ms(v.queue_s.p90) : "–"]),
      s.window_s ? `Last ${Math.round(s.window_s)} s` : "Since the server started (rates after the next refresh)");
    table($("lv-engines"), ["model", "version", "running", "waiting", "gateway queue", "KV cache", "prefix-cache hits"],
      s.engines.map((e) => [e.model, e.version || "", e.running ?? e.gate_running, e.waiting ?? 0,
        `${e.gate_waiting} / ${e.max_queue}`,
        e.kv_cache_usage === null ? "–" : h("span", {}, h("meter", { min: 0, max: 1, value: e.kv_cache_usage,
          "aria-label": `KV cache of ${e.model}` }), ` ${pct(e.kv_cache_usage)}`),
        pct(e.prefix_cache_hit_rate)]), "Served models");
    $("lv-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  await loadLoops();
}

// A gate or canary check on one line: what was compared, its interval, the counts, the verdict.
function checkLine(c) {
  const signed = (v) => (v === null || v === undefined ? "–" : `${v >= 0 ? "+" : ""}${v.toFixed(3)}`);
  const n = Array.isArray(c.n) ? c.n.join("/") : c.n;
  const gate = "metric" in c;  // gate: paired difference; canary: candidate vs production
  const head = gate ? `${c.name} ${c.metric} ${signed(c.diff)}` : `${c.name} ${fmt(c.candidate, 3)} vs ${fmt(c.production, 3)}`;
  const show = gate ? signed : (v) => fmt(v, 3);
  const bounds = c.low === null && c.high === null ? "" : ` [${show(c.low)}, ${show(c.high)}]`;
  return `${head}${bounds} n=${n} ${c.status}`;
}

function numbers(n) {
  const flat = Object.entries(n || {}).filter(([, v]) => typeof v !== "object" || v === null)
    .map(([k, v]) => `${k}=${fmt(v, 4)}`).join(", ");
  const checks = Array.isArray(n && n.checks) ? n.checks : [];
  if (!checks.length) return flat;
  return h("div", {}, checks.map((c) => h("div", { class: `check ${c.status}` }, checkLine(c))), flat ? h("div", {}, flat) : null);
}

async function loadLoops() {
  const box = $("lv-loops");
  const r = await api("GET", "/admin/loop");
  if (!r.ok) { clear(box).append(h("p", { class: "error" }, errorText(r))); return; }
  const parts = [];
  if (!r.data.data.length) parts.push(h("p", { class: "muted" }, "No loop has run yet (tuneloop loop run --model NAME)."));
  for (const loop of r.data.data) {
    const s = await api("GET", `/admin/loop/${encodeURIComponent(loop.model)}?last=30`);
    if (!s.ok) continue;
    const t = h("table", {});
    table(t, ["time", "cycle", "stage", "decision", "reason", "numbers"],
      [...s.data.decisions].reverse().map((d) => [when(d.time), d.cycle, d.stage, d.decision, d.reason, numbers(d.numbers)]),
      `${loop.model}: cycle ${loop.cycle}, stage ${loop.stage}${loop.outcome ? `, outcome ${loop.outcome}` : ""}`);
    parts.push(h("div", { class: "table-wrap" }, t));
  }
  clear(box).append(...parts);
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const secret = $("login-key").value.trim();
    $("login-key").value = "";
    if (secret) await login(secret);
  });
  $("logout").addEventListener("click", () => logout(""));
  window.addEventListener("hashchange", route);
  for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", showPlayground);
  $("pg-form").addEventListener("submit", send);
  $("pg-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("pg-form").requestSubmit();
  });
  $("pg-stop").addEventListener("click", () => aborter && aborter.abort());
  $("pg-clear").addEventListener("click", () => {
    conversation = []; pending = null;
    for (const id of ["pg-single", "pg-a", "pg-b"]) clear($(id));
    $("pg-vote").hidden = true;
    say($("pg-status"), "");
  });
  $("pg-vote-a").addEventListener("click", () => vote("a"));
  $("pg-vote-b").addEventListener("click", () => vote("b"));
  $("rv-filter").addEventListener("submit", loadReview);
  $("rv-all").addEventListener("change", (e) => {
    for (const c of document.querySelectorAll(".rv-select:not(:disabled)")) c.checked = e.target.checked;
  });
  $("rv-approve-selected").addEventListener("click", () => bulk("approve"));
  $("rv-reject-selected").addEventListener("click", () => bulk("reject"));
  $("lv-refresh").addEventListener("click", refreshLive);
  $("lv-auto").addEventListener("change", startLive);
  if (key()) login(key()); else $("login-key").focus();
});
