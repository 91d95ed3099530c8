// The console's page behaviour: the live inbox count, the ledger's live tail and
// confirmation of destructive forms. Plain JavaScript, no framework, no build step.
"use strict";

function liveCount(holder) {
  const counter = document.getElementById("pending-count");
  const state = document.getElementById("live-state");
  const changed = document.getElementById("count-changed");
  const shown = holder.dataset.shown;
  const source = new EventSource(holder.dataset.liveCount);
  source.addEventListener("pending", (message) => {
    counter.textContent = message.data;
    state.textContent = "(live)";
    changed.hidden = message.data === shown;
  });
  source.addEventListener("error", () => { state.textContent = "(live count: reconnecting…)"; });
  window.addEventListener("pagehide", () => source.close());
}

function cell(row, text, href) {
  const td = row.insertCell();
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  } else {
    td.textContent = text;
  }
  return td;
}

const APPLICATION_STREAM = /^loan-application-([0-9a-f-]{36})$/;

function ledgerTail(holder) {
  const button = document.getElementById("tail-toggle");
  const state = document.getElementById("tail-state");
  const body = document.getElementById("ledger-rows");
  const types = (holder.dataset.types || "").split(" ").filter(Boolean);
  let after = holder.dataset.after || "0";
  let source = null;
  let received = 0;
  if (holder.dataset.filtered === "yes") {
    button.disabled = true;
    state.textContent = "Live tail is available without the stream, applicant and time filters.";
    return;
  }
  function add(message) {
    const event = JSON.parse(message.data);
    after = message.lastEventId || after;
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = body.insertRow();
    row.className = "new";
    cell(row, String(event.seq)).className = "num";
    cell(row, String(event.position)).className = "num";
    cell(row, event.recorded_at);
    cell(row, event.type + " (new)");
    const match = APPLICATION_STREAM.exec(event.stream_id);
    cell(row, event.stream_id + " v" + event.stream_version,
      match ? "/console/applications/" + match[1] : null);
    cell(row, (event.metadata && event.metadata.actor) || "—");
    cell(row, "details and proof", "/console/ledger/events/" + event.position);
    received += 1;
    state.textContent = "Following: " + received + " new event(s).";
  }
  function start() {
    const params = new URLSearchParams({ after });
    if (holder.dataset.type) params.set("type", holder.dataset.type);
    source = new EventSource(holder.dataset.ledgerTail + "?" + params);
    for (const type of types) source.addEventListener(type, add);
    source.addEventListener("open", () => { state.textContent = "Following: " + received + " new event(s)."; });
    source.addEventListener("error", () => { state.textContent = "Reconnecting…"; });
    button.textContent = "Stop following";
    button.setAttribute("aria-pressed", "true");
  }
  function stop() {
    source.close();
    source = null;
    button.textContent = "Follow live";
    button.setAttribute("aria-pressed", "false");
    state.textContent = "Not following.";
  }
  button.addEventListener("click", () => (source ? stop() : start()));
  window.addEventListener("pagehide", () => source && source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  const count = document.querySelector("[data-live-count]");
  if (count) liveCount(count);
  const tail = document.querySelector("[data-ledger-tail]");
  if (tail) ledgerTail(tail);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (submit) => {
      if (!window.confirm(form.dataset.confirm)) submit.preventDefault();
    });
  }
});
