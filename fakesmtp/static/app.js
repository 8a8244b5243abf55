// The transcript page: polls the JSON API and draws each session as the conversation it was.
// Everything the client sent is shown with textContent, never parsed as HTML: a captured
// message or an SMTP command is data from a stranger.
"use strict";

const API = "/api/v1";
const POLL_MS = 1000;
const LIST_LIMIT = 200;

const state = {
  selected: null, // the session id in the URL's #session=...
  listSignature: "",
  detailSignature: "",
  openMessage: null,
};

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// With `fakesmtp serve --api-token T`, every API call carries `Authorization: Bearer T`.
// The token comes from the address (`/#token=T`, removed from it at once so it is not left in
// history or shown on screen) or from a prompt after a 401, and is kept in sessionStorage: it
// lives as long as this tab, and no other site can read it (unlike a cookie, it is never sent
// by the browser on its own, so another page cannot make use of it).
const TOKEN_KEY = "fakesmtp-api-token";

function takeTokenFromAddress() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  const rest = location.hash.replace(/(^#|&)token=[^&]*/, "$1").replace(/^#&?$/, "");
  history.replaceState(null, "", location.pathname + location.search + rest);
}
takeTokenFromAddress();

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

let asking = null; // one prompt at a time, however many requests got a 401

function askForToken() {
  if (!asking) {
    asking = new Promise((resolve) => {
      const token = window.prompt("This fakesmtp API needs its token (--api-token):");
      if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
      resolve(Boolean(token));
      setTimeout(() => (asking = null), 0);
    });
  }
  return asking;
}

async function authorizedFetch(url, options) {
  const send = () =>
    fetch(url, { cache: "no-store", ...options, headers: { ...(options?.headers || {}), ...authHeaders() } });
  let response = await send();
  if (response.status === 401 && (await askForToken())) response = await send();
  return response;
}

async function api(path, options) {
  const response = await authorizedFetch(API + path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function clock(seconds) {
  const date = new Date(seconds * 1000);
  const ms = String(date.getMilliseconds()).padStart(3, "0");
  return `${date.toLocaleTimeString([], { hour12: false })}.${ms}`;
}

function kindOf(code) {
  if (code === null || code === undefined) return "none";
  return { 2: "success", 3: "intermediate", 4: "transient", 5: "permanent" }[String(code)[0]];
}

function setStatus(text, down) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("down", Boolean(down));
}

// ------------------------------------------------------------------ header

async function refreshHeader() {
  const health = await api("/health");
  const smtp = health.smtp;
  const tls = smtp.tls_port ? `, SMTPS ${smtp.host}:${smtp.tls_port}` : "";
  document.getElementById("server").textContent = `SMTP ${smtp.host}:${smtp.port}${tls}`;
  document.getElementById("scenario").textContent =
    `scenario: ${health.scenario} · ${health.messages} message(s)`;
}

// ------------------------------------------------------------------ the session list

function sessionSignature(session) {
  return [session.id, session.exchange_count, session.end, session.message_ids.length].join(":");
}

function renderList(data) {
  const list = document.getElementById("sessions");
  document.getElementById("session-count").textContent =
    data.total > data.sessions.length ? `(newest ${data.sessions.length} of ${data.total})` : `(${data.total})`;
  document.getElementById("no-sessions").hidden = data.sessions.length > 0;
  const items = data.sessions.map((session) => {
    const worst = session.worst ? `worst-${kindOf(session.worst)}` : "";
    const messages = session.message_ids.length;
    const button = el(
      "button",
      {
        type: "button",
        class: `session ${worst}`,
        "data-id": session.id,
        "aria-current": session.id === state.selected ? "true" : null,
        onclick: () => select(session.id),
      },
      el(
        "span",
        { class: "line1" },
        el("span", { text: `${clock(session.started_at)} ${session.client}` }),
        session.worst
          ? el("span", { class: "code-badge", text: String(session.worst) })
          : el("span", { class: "code-badge muted", text: "ok" }),
      ),
      el(
        "span",
        { class: "line2" },
        `${session.helo || "no HELO"} · ${session.exchange_count} exchange(s)`,
        messages ? ` · ${messages} message(s)` : "",
        " · ",
        session.active ? el("span", { class: "live", text: "in progress" }) : session.end || "",
      ),
    );
    return el("li", {}, button);
  });
  list.replaceChildren(...items);
}

async function refreshList() {
  const data = await api(`/sessions?limit=${LIST_LIMIT}`);
  const signature = data.sessions.map(sessionSignature).join("|");
  if (signature !== state.listSignature) {
    state.listSignature = signature;
    renderList(data);
  }
  if (!state.selected && data.sessions.length) {
    select(data.sessions[0].id, { replace: true });
    return;
  }
  const current = data.sessions.find((session) => session.id === state.selected);
  if (current && sessionSignature(current) !== state.detailSignature) await refreshDetail();
}

// ------------------------------------------------------------------ one session

// What the reply means, read from what it says (the API's explained_by): a vendor's known use
// of the status, a precise status, recognisable wording, then the code. The registry's words
// for the status stay under "More", so a broad status never contradicts the advice shown.
const BASIS = {
  vendor: (exchange) => `as ${exchange.vendor} uses ${exchange.status}`,
  status: (exchange) => `from the enhanced status ${exchange.status}`,
  text: (exchange) => (exchange.vendor ? `from the text, as ${exchange.vendor} words it` : "from the reply's text"),
  code: (exchange) => `from the code ${exchange.code}`,
};

function explainBlock(exchange) {
  if (!exchange.summary && !exchange.advice) return null;
  const basis = BASIS[exchange.explained_by];
  const more = [
    exchange.meaning ? el("p", { class: "meaning", text: exchange.meaning }) : null,
    exchange.status_meaning && exchange.explained_by !== "status"
      ? el("p", { class: "status-meaning", text: `${exchange.status} in RFC 3463: ${exchange.status_meaning}` })
      : null,
    exchange.source ? el("p", { class: "source", text: `Source: ${exchange.source}` }) : null,
  ].filter(Boolean);
  return el(
    "div",
    { class: "explain", "data-basis": exchange.explained_by || "" },
    exchange.summary
      ? el("div", { class: "summary" }, exchange.summary, basis ? el("span", { class: "basis", text: ` (${basis(exchange)})` }) : null)
      : null,
    exchange.advice ? el("div", { class: "advice", text: exchange.advice }) : null,
    more.length ? el("details", {}, el("summary", { text: "More" }), ...more) : null,
  );
}

function exchangeCells(exchange, started) {
  const offset = `+${(exchange.at - started).toFixed(3)}s`;
  const when = el("div", { class: "when", title: clock(exchange.at) }, offset, el("span", { class: "stage", text: exchange.stage }));
  let clientText = exchange.command;
  if (clientText === null && exchange.stage === "connect") clientText = "(connects)";
  const client = clientText === null ? el("div") : el("div", { class: "client", text: clientText });
  const kind = kindOf(exchange.code);
  const server = el(
    "div",
    { class: `server ${exchange.reply === null ? "none" : kind}`, "data-code": exchange.code },
    exchange.reply === null
      ? el("span", { text: `no reply${exchange.note ? `: ${exchange.note}` : ""}` })
      : el("span", { class: "reply", text: exchange.reply.replace(/\r\n/g, "\n") }),
    exchange.reply !== null && exchange.note ? el("div", { class: "note", text: exchange.note }) : null,
    exchange.rule ? el("div", {}, el("span", { class: "rule", text: exchange.rule })) : null,
    explainBlock(exchange),
  );
  return [when, client, server];
}

function renderDetail(session) {
  const detail = document.getElementById("detail");
  const facts = [
    `from ${session.client}:${session.client_port}`,
    session.listener === "smtps" ? "implicit TLS" : session.tls ? "STARTTLS" : "plain text",
    session.helo ? `HELO ${session.helo}` : null,
    session.user ? `user ${session.user}` : null,
    `started ${clock(session.started_at)}`,
  ].filter(Boolean);
  const grid = el(
    "div",
    { class: "conversation" },
    el("div", { class: "heading", text: "" }),
    el("div", { class: "heading", text: "Client", style: "text-align: right" }),
    el("div", { class: "heading", text: "Server (fakesmtp)" }),
  );
  for (const exchange of session.transcript) grid.append(...exchangeCells(exchange, session.started_at));
  grid.append(
    el(
      "div",
      { class: "ended" },
      session.active
        ? "in progress…"
        : `session ended: ${session.end}${session.ended_at ? ` at ${clock(session.ended_at)}` : ""}`,
    ),
  );
  const captured = session.messages.length
    ? el(
        "section",
        { class: "captured" },
        el("h3", { text: "Captured messages" }),
        el(
          "ul",
          {},
          ...session.messages.map((message) =>
            el(
              "li",
              {},
              message.deleted
                ? el("span", { class: "muted", text: `${message.id} (no longer stored)` })
                : el(
                    "span",
                    {},
                    el("button", { type: "button", class: "view", onclick: () => openMessage(message.id) }, "View"),
                    `${message.subject ?? "(no subject)"} — ${message.from || "<>"} → ${message.to.join(", ")}, ${message.size} bytes`,
                  ),
            ),
          ),
        ),
        el("div", { id: "message-view" }),
      )
    : null;
  const header = el(
    "header",
    {},
    el("h2", { text: `Session ${session.id}` }),
    el("div", { class: "muted", text: facts.join(" · ") }),
  );
  detail.replaceChildren(...[header, grid, captured].filter(Boolean));
  if (state.openMessage && session.messages.some((m) => m.id === state.openMessage)) {
    openMessage(state.openMessage);
  }
}

async function refreshDetail() {
  const id = state.selected;
  if (!id) return;
  let session;
  try {
    session = await api(`/sessions/${encodeURIComponent(id)}`);
  } catch (error) {
    state.detailSignature = "";
    document.getElementById("detail").replaceChildren(el("p", { class: "muted", text: `Session ${id}: ${error.message}` }));
    return;
  }
  if (id !== state.selected) return; // another session was chosen meanwhile
  state.detailSignature = sessionSignature(session);
  renderDetail(session);
}

function select(id, { replace = false } = {}) {
  const hash = `#session=${encodeURIComponent(id)}`;
  if (location.hash !== hash) {
    if (replace) history.replaceState(null, "", hash);
    else history.pushState(null, "", hash);
  }
  fromHash();
}

function fromHash() {
  const match = /^#session=(.+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  if (id === state.selected) return;
  state.selected = id;
  state.detailSignature = "";
  state.openMessage = null;
  for (const button of document.querySelectorAll("#sessions button")) {
    button.setAttribute("aria-current", button.dataset.id === id ? "true" : "false");
  }
  refreshDetail();
}

// ------------------------------------------------------------------ one message

async function openMessage(id) {
  state.openMessage = id;
  const view = document.getElementById("message-view");
  if (!view) return;
  let message;
  try {
    message = await api(`/messages/${encodeURIComponent(id)}`);
  } catch (error) {
    view.replaceChildren(el("p", { class: "muted", text: `Message ${id}: ${error.message}` }));
    return;
  }
  const node = document.getElementById("message-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".subject").textContent = message.subject ?? "(no subject)";
  const raw = node.querySelector(".raw");
  raw.href = `${API}/messages/${encodeURIComponent(id)}/raw`;
  // A link cannot carry the token: with one, fetch the bytes and show them from memory.
  raw.addEventListener("click", async (event) => {
    if (!sessionStorage.getItem(TOKEN_KEY)) return;
    event.preventDefault();
    const response = await authorizedFetch(raw.href);
    const blob = new Blob([await response.arrayBuffer()], { type: "text/plain" });
    window.open(URL.createObjectURL(blob), "_blank", "noopener");
  });
  node.querySelector(".close").addEventListener("click", () => {
    state.openMessage = null;
    view.replaceChildren();
  });
  const envelope = node.querySelector(".envelope");
  const rows = [
    ["MAIL FROM", message.from || "<>"],
    ["RCPT TO", message.to.join(", ")],
    ["ESMTP", message.mail_options.join(" ") || "—"],
    ["Size", `${message.size} bytes`],
    ["Received", clock(message.received_at)],
    ["ID", message.id],
  ];
  for (const [term, value] of rows) envelope.append(el("dt", { text: term }), el("dd", { text: value }));
  const table = node.querySelector(".headers table");
  for (const [name, value] of message.headers || []) {
    table.append(el("tr", {}, el("td", { text: `${name}:` }), el("td", { text: value })));
  }
  let body = message.text;
  if (body === null || body === undefined) {
    body = message.html ? `(HTML only; its source:)\n\n${message.html}` : message.parse_error || "(no text part)";
  }
  node.querySelector(".body").textContent = body;
  const attachments = node.querySelector(".attachments");
  for (const part of message.attachments || []) {
    attachments.append(el("li", { text: `${part.filename || "(unnamed)"} — ${part.content_type}, ${part.size} bytes` }));
  }
  view.replaceChildren(node);
}

// ------------------------------------------------------------------ polling

async function poll() {
  if (!document.hidden) {
    try {
      await Promise.all([refreshHeader(), refreshList()]);
      setStatus(`live · ${clock(Date.now() / 1000).slice(0, 8)}`);
    } catch (error) {
      setStatus(`server unreachable (${error.message})`, true);
    }
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("clear").addEventListener("click", async () => {
  if (!confirm("Forget every captured message and session?")) return;
  await api("/reset?store=true", { method: "POST" });
  state.selected = null;
  state.listSignature = "";
  history.replaceState(null, "", location.pathname);
  document.getElementById("detail").replaceChildren(el("p", { class: "muted", text: "Cleared." }));
  await refreshList();
});

window.addEventListener("hashchange", fromHash);
window.addEventListener("popstate", fromHash);
fromHash();
poll();
