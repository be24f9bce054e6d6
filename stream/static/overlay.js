// sentistream OBS overlay: follows one stream's events (GET /ws/events?stream=ID) and shows its
// label, score bar and a row per face. Reconnects by itself, forever: the stream may not have
// started yet, may end and start again, or the server may restart. No external assets.
"use strict";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const STREAM = query.get("stream") || "";
// ?token=T as OBS needs it; #token=T works too (not sent in the page request).
const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token") || query.get("token");
const MAX_FACES = 6;          // rows shown, lowest ids first
const FACE_GONE_S = 3;        // media seconds a face may be out of view before its row goes
const MAX_DELAY_MS = 5000;    // reconnect back-off: 0.5, 1, 2, 4, 5, 5, ... s

document.documentElement.dataset.theme = query.get("theme") === "light" ? "light" : "dark";
document.documentElement.style.setProperty("--scale", String(Number(query.get("scale")) || 1));

let socket = null;
let retries = 0;
let everLive = false;         // an estimate has been shown (kept, dimmed, while reconnecting)
const faces = new Map();      // face id -> {row, lastT}

function setState(state, text) {
  $("panel").dataset.state = state;
  $("status").textContent = text;
}

function eventsUrl() {
  const url = new URL("ws/events", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  url.searchParams.set("stream", STREAM);
  if (TOKEN) url.searchParams.set("token", TOKEN);
  return url.href;
}

function connect() {
  setState(everLive ? "reconnecting" : "connecting", (everLive ? "reconnecting to " : "connecting to ") + STREAM);
  let why = "";
  try {
    socket = new WebSocket(eventsUrl());
  } catch (err) {
    return retry(String(err));
  }
  socket.onmessage = (e) => {
    let ev;
    try { ev = JSON.parse(e.data); } catch (err) { return; }
    if (ev.type === "error") why = ev.code === "unknown_stream" ? "waiting for stream " + STREAM : ev.message;
    else onEvent(ev);
  };
  socket.onclose = () => { socket = null; retry(why); };
}

function retry(why) {
  const delay = Math.min(500 * 2 ** retries, MAX_DELAY_MS);
  retries += 1;
  // The server said why (no such stream yet, wrong token): waiting; the connection just went: reconnecting.
  if (why || !everLive) setState("waiting", why || "waiting for stream " + STREAM);
  else setState("reconnecting", "reconnecting to " + STREAM);
  setTimeout(connect, delay);
}

function onEvent(ev) {
  if (ev.type === "sentiment") return onSentiment(ev);
  if (ev.type === "summary") setState("waiting", "stream " + STREAM + " ended");
}

function signed(x) { return (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(2); }

function setBar(neg, pos, score) {
  const s = Math.max(-1, Math.min(1, Number(score) || 0));
  neg.style.width = `${Math.round(Math.max(0, -s) * 50)}%`;
  pos.style.width = `${Math.round(Math.max(0, s) * 50)}%`;
}

function onSentiment(ev) {
  retries = 0;
  everLive = true;
  setState("live", "live");
  $("label").textContent = ev.label;
  $("label").dataset.label = ev.label;
  $("score").textContent = signed(ev.score);
  setBar($("bar-neg"), $("bar-pos"), ev.score);
  $("weights").hidden = ev.weights !== "random";
  if (Array.isArray(ev.faces)) onFaces(ev.t, ev.faces);
}

function faceRow() {
  const row = document.createElement("li");
  const cells = { id: "span", lab: "span", bar: "div", val: "span" };
  const el = {};
  for (const [cls, tag] of Object.entries(cells)) {
    el[cls] = document.createElement(tag);
    el[cls].className = cls;
    row.append(el[cls]);
  }
  el.neg = document.createElement("i"); el.neg.className = "neg";
  el.pos = document.createElement("i"); el.pos.className = "pos";
  el.bar.append(el.neg, el.pos);
  return { row, el, lastT: 0 };
}

function onFaces(t, list) {
  for (const f of list) {
    let face = faces.get(f.id);
    if (!face) { face = faceRow(); faces.set(f.id, face); }
    face.lastT = t;
    face.el.id.textContent = "#" + f.id;
    face.el.lab.textContent = f.label;
    face.el.lab.dataset.label = f.label;
    face.el.val.textContent = signed(f.score);
    setBar(face.el.neg, face.el.pos, f.score);
  }
  const inView = new Set(list.map((f) => f.id));
  for (const [id, face] of faces) {
    if (t - face.lastT > FACE_GONE_S || t < face.lastT) { face.row.remove(); faces.delete(id); }
    else face.row.classList.toggle("gone", !inView.has(id));
  }
  const shown = [...faces.keys()].sort((a, b) => a - b).slice(0, MAX_FACES);
  $("faces").replaceChildren(...shown.map((id) => faces.get(id).row));
}

connect();
