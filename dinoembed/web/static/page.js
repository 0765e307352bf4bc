// dinoembed serve: the page's behaviour. Plain JavaScript, no build step, no CDN.
// Asks the app's own routes: /health, POST /search (image bytes or {"key"}),
// GET /duplicates, GET /thumb (fetched with the bearer token, shown as blob URLs).
"use strict";

const $ = (id) => document.getElementById(id);
let threshold = 0.95;
let needsToken = false;

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("dinoembed-token", fromHash);
    history.replaceState(null, "", location.pathname);
  }
  const typed = $("token").value.trim();
  if (typed) sessionStorage.setItem("dinoembed-token", typed);
  return typed || sessionStorage.getItem("dinoembed-token") || "";
}

async function call(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const t = token();
  if (t) headers.set("Authorization", "Bearer " + t);
  const response = await fetch(path, { ...init, headers });
  if (!response.ok) {
    let text = response.status + " " + response.statusText;
    try { text = (await response.json()).error || text; } catch (_) { /* not JSON */ }
    if (response.status === 401) $("token-row").hidden = false;
    throw new Error(text);
  }
  return response;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function health() {
  try {
    const h = await (await fetch("health")).json();
    threshold = h.duplicates_threshold;
    needsToken = h.auth;
    $("token-row").hidden = !needsToken;
    if (sessionStorage.getItem("dinoembed-token")) $("token").placeholder = "(given)";
    $("dupes-note").textContent = "(cosine ≥ " + threshold + ")";
    $("status").textContent = "dinoembed " + h.version + " · " + (h.index || "no collection") +
      " · model " + (h.model.name || "") + " " + h.model.sha256.slice(0, 12) +
      (h.model.loaded ? " (loaded)" : " (loads on first image)") +
      ((h.model.name || "").startsWith("standin:") ? " · STAND-IN MODEL: scores are meaningless" : "");
  } catch (err) {
    $("status").textContent = "cannot reach the server: " + err.message;
  }
}

function tile(hit, onClick) {
  const div = document.createElement("div");
  div.className = "tile";
  div.title = hit.path || hit.key;
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.alt = hit.key;
  frame.appendChild(img);
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = hit.score.toFixed(4);
  const key = document.createElement("div");
  key.className = "key";
  key.textContent = hit.key;
  div.append(frame, score, key);
  div.addEventListener("click", () => onClick(hit.key));
  call("thumb?key=" + encodeURIComponent(hit.key))
    .then((r) => r.blob())
    .then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = "no thumbnail: " + hit.key; });
  return div;
}

function show(where, hits, emptyText) {
  const grid = $(where);
  grid.replaceChildren();
  if (!hits.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = emptyText;
    grid.appendChild(p);
  }
  for (const hit of hits) grid.appendChild(tile(hit, searchKey));
}

function query() {
  const params = new URLSearchParams({ top_k: $("top-k").value || "12" });
  if ($("prefix").value) params.set("prefix", $("prefix").value);
  return "search?" + params;
}

async function searchFile(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").className = "shown";
  $("drop-text").textContent = file.name;
  say("searching…");
  try {
    const response = await call(query(), {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const doc = await response.json();
    show("results", doc.results, "nothing similar found");
    show("duplicates", doc.results.filter((h) => h.score >= threshold), "no duplicates");
    say(doc.results.length + " similar images in " + doc.collection);
    health();
  } catch (err) {
    say(err.message, true);
  }
}

async function searchKey(key) {
  say("searching like " + key + "…");
  try {
    const response = await call(query(), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key }),
    });
    const doc = await response.json();
    const dupes = await (await call("duplicates?key=" + encodeURIComponent(key))).json();
    $("preview").className = "";
    $("drop-text").textContent = key;
    show("results", doc.results, "nothing similar found");
    show("duplicates", dupes.neighbours, "no duplicates");
    say(doc.results.length + " images like " + key);
  } catch (err) {
    say(err.message, true);
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) searchFile(e.target.files[0]); });
token();
health();
