// Seals and proofs, checked in the browser with WebCrypto (SHA-256, Ed25519): the same
// procedures as the Python snippet in docs/architecture.md ("Seals and proofs"), written
// again here so that the result does not rest on the server's word. The server supplies
// data only; every "passed" below is computed on this page.
"use strict";

const TRUSTED_KEY = "lending-ledger/trusted-seal-key";
const SEAL_STATEMENT = "lending-ledger/seal/v1";
const encoder = new TextEncoder();

// --- Bytes ---

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text) {
  if (typeof text !== "string" || !/^(?:[0-9a-f]{2})*$/.test(text)) {
    throw new Error("not lowercase hex: " + String(text).slice(0, 20));
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(text.substr(i * 2, 2), 16);
  return out;
}

function fromBase64(text) {
  const raw = atob(text.trim());
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// --- Canonical JSON (docs/architecture.md, "Canonical encoding and the hash chain") ---

function byCodePoint(a, b) {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function canonical(value) {
  if (value === null) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new Error("canonical JSON has integers only");
    return String(value);
  }
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  const keys = Object.keys(value).sort(byCodePoint);
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
}

// RFC 3339 time -> UTC with microseconds and Z, as the hash covers it.
function utcMicros(text) {
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|z|[+-]\d{2}:\d{2})$/.exec(text);
  if (!m) throw new Error("not a time: " + text);
  let offset = 0;
  if (m[8].length > 1) {
    const sign = m[8][0] === "-" ? -1 : 1;
    offset = sign * (Number(m[8].slice(1, 3)) * 60 + Number(m[8].slice(4, 6)));
  }
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) - offset * 60000;
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return String(d.getUTCFullYear()).padStart(4, "0") + "-" + two(d.getUTCMonth() + 1) + "-" +
    two(d.getUTCDate()) + "T" + two(d.getUTCHours()) + ":" + two(d.getUTCMinutes()) + ":" +
    two(d.getUTCSeconds()) + "." + (m[7] || "").padEnd(6, "0") + "Z";
}

async function eventHash(e) {
  const envelope = {
    stream_id: e.stream_id,
    stream_version: e.stream_version,
    event_id: e.event_id,
    event_type: e.type,
    schema_version: e.schema_version,
    data: e.data,
    metadata: e.metadata,
    recorded_at: utcMicros(e.recorded_at),
    prev_hash: e.prev_hash,
  };
  return sha256(encoder.encode(canonical(envelope)));
}

// --- Checks: each returns a list of {ok, label, detail} ---

class Checks {
  constructor() { this.items = []; }
  add(ok, label, detail) { this.items.push({ ok, label, detail: detail || "" }); return ok; }
  get ok() { return this.items.length > 0 && this.items.every((c) => c.ok); }
}

async function verifySeal(checks, rawKey, seal, name) {
  const keyId = hex(await sha256(rawKey));
  checks.add(keyId === seal.key_id, name + ": signed by the key used here",
    "key id " + keyId.slice(0, 16) + "…, the seal names " + String(seal.key_id).slice(0, 16) + "…");
  const statement = encoder.encode(canonical({
    statement: SEAL_STATEMENT,
    tree_size: seal.tree_size,
    root_hash: seal.root_hash,
    previous_seal_hash: seal.previous_seal_hash,
    sealed_at: seal.sealed_at,
    key_id: seal.key_id,
  }));
  let valid = false;
  let why = "";
  try {
    const key = await crypto.subtle.importKey("raw", rawKey, { name: "Ed25519" }, false, ["verify"]);
    valid = await crypto.subtle.verify({ name: "Ed25519" }, key, fromHex(seal.signature), statement);
  } catch (error) {
    why = " (" + error.message + ")";
  }
  checks.add(valid, name + ": Ed25519 signature over the seal statement", (valid ? "valid" : "invalid") + why);
  const sealHash = hex(await sha256(statement));
  checks.add(sealHash === seal.seal_hash, name + ": seal hash is SHA-256 of the statement", sealHash.slice(0, 16) + "…");
  return fromHex(seal.root_hash);
}

async function node(left, right) { return sha256(concat(Uint8Array.of(1), left, right)); }

// RFC 9162, 2.1.3.2
async function verifyInclusion(checks, rawKey, proof) {
  const event = proof.event, seal = proof.seal;
  const root = await verifySeal(checks, rawKey, seal, "Seal " + seal.tree_size);
  const digest = await eventHash(event);
  checks.add(hex(digest) === event.hash, "Event hash recomputed from its content",
    hex(digest) === event.hash ? "matches " + event.hash.slice(0, 16) + "…" : "content gives " + hex(digest).slice(0, 16) + "…, the event says " + String(event.hash).slice(0, 16) + "…");
  let fn = BigInt(event.seq) - 1n, sn = BigInt(seal.tree_size) - 1n;
  if (!checks.add(fn >= 0n && fn <= sn, "The event lies inside the sealed tree", "seq " + event.seq + " of " + seal.tree_size)) return;
  let r = await sha256(concat(Uint8Array.of(0), digest));
  let tooLong = false;
  for (const p of proof.audit_path.map(fromHex)) {
    if (sn === 0n) { tooLong = true; break; }
    if ((fn & 1n) === 1n || fn === sn) {
      r = await node(p, r);
      while (fn !== 0n && (fn & 1n) === 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = await node(r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  const reaches = !tooLong && sn === 0n && equal(r, root);
  checks.add(reaches, "Audit path leads from the event to the signed root",
    proof.audit_path.length + " node(s); computed root " + hex(r).slice(0, 16) + "…");
}

// RFC 9162, 2.1.4.2
async function verifyConsistency(checks, rawKey, proof) {
  const first = proof.first, second = proof.second;
  const firstRoot = await verifySeal(checks, rawKey, first, "Seal " + first.tree_size);
  const secondRoot = await verifySeal(checks, rawKey, second, "Seal " + second.tree_size);
  const m = BigInt(first.tree_size), n = BigInt(second.tree_size);
  const path = proof.consistency_path.map(fromHex);
  const label = "Seal " + second.tree_size + " extends seal " + first.tree_size + " unchanged";
  if (!checks.add(m > 0n && m <= n, "Sizes in order", first.tree_size + " ≤ " + second.tree_size)) return;
  if (m === n) {
    checks.add(path.length === 0 && equal(firstRoot, secondRoot), label, "equal sizes, equal roots");
    return;
  }
  if (path.length === 0) { checks.add(false, label, "empty proof"); return; }
  if ((m & (m - 1n)) === 0n) path.unshift(firstRoot);
  let fn = m - 1n, sn = n - 1n;
  while ((fn & 1n) === 1n) { fn >>= 1n; sn >>= 1n; }
  let fr = path[0], sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) { checks.add(false, label, "proof too long"); return; }
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await node(c, fr); sr = await node(c, sr);
      while (fn !== 0n && (fn & 1n) === 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      sr = await node(sr, c);
    }
    fn >>= 1n; sn >>= 1n;
  }
  checks.add(sn === 0n && equal(fr, firstRoot) && equal(sr, secondRoot), label,
    proof.consistency_path.length + " node(s)");
}

// --- The page ---

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || "the server answered " + response.status);
    error.status = response.status;
    throw error;
  }
  return body;
}

// The key to check with: the one the auditor pasted, else the one the server names.
async function keyToUse(section) {
  const input = section.querySelector("#trusted-key") || document.getElementById("trusted-key");
  const pasted = input ? input.value.trim() : "";
  if (pasted) {
    localStorage.setItem(TRUSTED_KEY, pasted);
    return { raw: fromBase64(pasted), pinned: true };
  }
  localStorage.removeItem(TRUSTED_KEY);
  const served = await getJSON(section.dataset.publicKey);
  return { raw: fromBase64(served.public_key), pinned: false };
}

function show(target, checks, claims, keyInfo) {
  target.replaceChildren();
  const box = document.createElement("div");
  box.className = "result";
  const summary = document.createElement("p");
  summary.className = "summary " + (checks.ok ? "pass" : "fail");
  summary.textContent = checks.ok
    ? "✓ Verified in this browser: every check passed."
    : "✗ Verification FAILED in this browser: see the failed check(s) below.";
  summary.dataset.result = checks.ok ? "passed" : "failed";
  box.appendChild(summary);
  const heading = document.createElement("p");
  heading.textContent = "Checked here (WebCrypto):";
  box.appendChild(heading);
  const list = document.createElement("ul");
  for (const c of checks.items) {
    const li = document.createElement("li");
    li.className = c.ok ? "pass" : "fail";
    li.textContent = (c.ok ? "✓ passed: " : "✗ FAILED: ") + c.label + (c.detail ? " — " + c.detail : "");
    list.appendChild(li);
  }
  box.appendChild(list);
  const claimHeading = document.createElement("p");
  claimHeading.textContent = "The server's claim (not checked here):";
  box.appendChild(claimHeading);
  const claimList = document.createElement("ul");
  const all = [...claims, keyInfo.pinned
    ? "Nothing about the key: you supplied it."
    : "That the key it names is the service's genuine key: paste a key you trust to check this independently."];
  for (const claim of all) {
    const li = document.createElement("li");
    li.textContent = claim;
    claimList.appendChild(li);
  }
  box.appendChild(claimList);
  target.appendChild(box);
}

function showError(target, message) {
  target.replaceChildren();
  const p = document.createElement("p");
  p.className = "alert";
  p.dataset.result = "error";
  p.textContent = message;
  target.appendChild(p);
}

function wire(button, section, target, run) {
  const input = section.querySelector("#trusted-key") || document.getElementById("trusted-key");
  if (input && !input.value) input.value = localStorage.getItem(TRUSTED_KEY) || "";
  button.addEventListener("click", async () => {
    button.disabled = true;
    target.textContent = "Checking…";
    try {
      await run();
    } catch (error) {
      showError(target, (error.status === 409 ? "Not yet sealed: " : "Could not verify: ") + error.message);
    } finally {
      button.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  if (!crypto.subtle) return;
  const inclusion = document.querySelector("[data-verify-inclusion]");
  if (inclusion) {
    const target = document.getElementById("inclusion-result");
    wire(document.getElementById("verify-inclusion"), inclusion, target, async () => {
      const keyInfo = await keyToUse(inclusion);
      const proof = await getJSON(inclusion.dataset.verifyInclusion);
      const checks = new Checks();
      await verifyInclusion(checks, keyInfo.raw, proof);
      show(target, checks, [
        "That this event is at seq " + proof.seq + " and position " + proof.event.position + " (the proof shows it is leaf " + proof.leaf_index + " of the signed tree).",
        "That no event was added after the latest seal and removed again (seal " + proof.seal.tree_size + ").",
      ], keyInfo);
    });
  }
  const seal = document.querySelector("[data-verify-seal]");
  if (seal) {
    const target = document.getElementById("seal-result");
    wire(document.getElementById("verify-seal"), seal, target, async () => {
      const keyInfo = await keyToUse(seal);
      const latest = await getJSON(seal.dataset.verifySeal);
      const checks = new Checks();
      await verifySeal(checks, keyInfo.raw, latest, "Seal " + latest.tree_size);
      show(target, checks, [
        "That seal " + latest.tree_size + " is the latest one (keep copies of seals and check later ones against them).",
      ], keyInfo);
    });
  }
  const consistency = document.querySelector("[data-verify-consistency]");
  if (consistency) {
    const target = document.getElementById("consistency-result");
    wire(document.getElementById("verify-consistency"), consistency, target, async () => {
      const keyInfo = await keyToUse(consistency);
      const params = new URLSearchParams({
        first: document.getElementById("first-size").value,
        second: document.getElementById("second-size").value,
      });
      const proof = await getJSON(consistency.dataset.verifyConsistency + "?" + params);
      const checks = new Checks();
      await verifyConsistency(checks, keyInfo.raw, proof);
      show(target, checks, ["That both seals are ones the service issued (their signatures are checked above)."], keyInfo);
    });
  }
});
