// sentistream page: camera + mic -> WebRTC (non-trickle offer to POST /offer) -> overlay video back,
// events over the "events" data channel -> estimate, weights, timeline, transcript. No external assets.
"use strict";

const $ = (id) => document.getElementById(id);
const TIMELINE_SECONDS = 60;
const MAX_POINTS = 2000;      // bounded memory however long the call runs
const MAX_FINALS = 60;        // transcript segments kept on the page

let pc = null;
let channel = null;           // the "events" data channel: events in, "ping"/"bye" out
let pinger = null;
let watchdog = null;          // reconnects when the server's heartbeats stop (its process is gone)
let lastHeard = 0;            // when the data channel last brought anything
let heartbeats = false;       // the server sends heartbeats (server.heartbeat_s > 0)
let retries = 0;              // reconnects in a row without a heartbeat in between
const LOST_MS = 4000;         // this long without a message after heartbeats: the server is gone
const MAX_RETRIES = 8;         // backing off 1, 2, 4, 8, 10, 10... s: about a minute in all
let stream = null;
let points = [];              // {t, score, label}
let finals = [];
let finalEnd = -Infinity;
let estimates = 0;
const MAX_PEOPLE = 16;        // people rows kept (the longest gone are dropped first)
const people = new Map();     // face id -> {points: [{t, score, label}], row, text, canvas, lastT}

// The token may be given as #token=T (not sent to servers or logs) or ?token=T.
function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  return fromHash || new URLSearchParams(location.search).get("token");
}

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text || state;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function notice(message, cls) {
  const li = document.createElement("li");
  li.textContent = message;
  if (cls) li.className = cls;
  const list = $("notices");
  list.prepend(li);
  while (list.children.length > 6) list.lastChild.remove();
}

function waitForIceGathering(conn) {
  // Non-trickle: the offer carries every candidate, like aiortc's example server expects.
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (conn.iceGatheringState === "complete") {
        conn.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 5000); // whatever was gathered by then
  });
}

async function start() {
  showError("");
  const wantVideo = $("use-video").checked;
  const wantAudio = $("use-audio").checked;
  if (!wantVideo && !wantAudio) {
    showError("Choose the camera, the microphone or both.");
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("This page needs a secure origin (https:// or http://localhost) to use the camera.");
    return;
  }
  $("start").disabled = true;
  setStatus("connecting", "asking for camera/mic");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: wantVideo ? { width: { ideal: 640 }, height: { ideal: 480 } } : false,
      audio: wantAudio,
    });
    pc = new RTCPeerConnection({ iceServers: [] });
    channel = pc.createDataChannel("events");
    channel.onmessage = (e) => {
      lastHeard = Date.now();
      try { onEvent(JSON.parse(e.data)); } catch (err) { console.error(err); }
    };
    // The server closes a peer silent for server.media_timeout_s: media keeps it alive, and so does
    // this ping while the camera or microphone sends nothing (muted).
    channel.onopen = () => {
      pinger = setInterval(() => send({ type: "ping" }), 2000);
      lastHeard = Date.now();
      watchdog = setInterval(checkAlive, 1000);
    };
    pc.ontrack = (e) => {
      if (e.track.kind !== "video") return;
      $("video").srcObject = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      $("video-placeholder").hidden = true;
    };
    pc.onconnectionstatechange = () => {
      const s = pc ? pc.connectionState : "closed";
      setStatus(s === "connected" ? "connected" : s === "failed" ? "failed" : "connecting", s);
      if (s === "failed") lost("connection failed");
    };
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    if (!wantVideo) $("video-placeholder").textContent = "Microphone only: text-only estimates.";

    setStatus("connecting", "connecting");
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const headers = { "Content-Type": "application/json" };
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    const response = await fetch("offer", {
      method: "POST",
      headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `server answered ${response.status}`);
    await pc.setRemoteDescription(answer);
    $("stop").disabled = false;
  } catch (err) {
    const message = err && err.message ? err.message : String(err);
    if (retries > 0) return lost(message);  // reconnecting: keep trying (backing off) up to MAX_RETRIES
    stop();
    setStatus("error", "error");
    showError(message);
  }
}

function send(message) {
  if (channel && channel.readyState === "open") {
    try { channel.send(JSON.stringify(message)); } catch (err) { /* closing: nothing to tell */ }
  }
}

// A stream whose server (or cluster replica) died must never look "running": with heartbeats
// seen, silence for LOST_MS means it is gone; a new offer goes to a live replica.
function checkAlive() {
  if (heartbeats && Date.now() - lastHeard > LOST_MS) lost("server lost");
}

function lost(why) {
  stop(why);
  setStatus("error", why);
  if (retries >= MAX_RETRIES) { showError(`${why}: gave up after ${MAX_RETRIES} reconnects, press start`); return; }
  retries += 1;
  notice(`${why}: reconnecting (${retries}/${MAX_RETRIES})`);
  setTimeout(() => { if (!pc) start(); }, Math.min(1000 * 2 ** (retries - 1), 10000));
}

// Says goodbye so the server frees this call's slot at once (not after its media timeout).
function bye() { send({ type: "bye" }); }

function stop(reason) {
  if (pinger) { clearInterval(pinger); pinger = null; }
  if (watchdog) { clearInterval(watchdog); watchdog = null; }
  heartbeats = false;
  bye();
  channel = null;
  if (pc) { pc.close(); pc = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  $("video").srcObject = null;
  $("video-placeholder").hidden = false;
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus("idle", reason || "idle");
}

function fmt(x, digits) { return typeof x === "number" ? x.toFixed(digits) : "\u2013"; }
function setBar(id, value) {
  $(id).style.width = `${Math.round(Math.max(0, Math.min(1, value || 0)) * 100)}%`;
  $(id + "-v").textContent = fmt(value, 2);
}

function onEvent(ev) {
  switch (ev.type) {
    case "heartbeat": heartbeats = true; retries = 0; return;
    case "sentiment": return onSentiment(ev);
    case "transcript": return onTranscript(ev);
    case "warning": return notice(ev.message);
    case "error": return notice("error: " + ev.message);
    case "summary": return notice(`session ended: ${ev.estimates} estimates, ${ev.frames_in} frames`, "info");
  }
}

function onSentiment(ev) {
  const label = $("label");
  label.textContent = ev.label;
  label.dataset.label = ev.label;
  $("score").textContent = (ev.score >= 0 ? "+" : "") + fmt(ev.score, 2);
  for (const k of ["negative", "neutral", "positive"]) setBar("prob-" + k, ev.probs ? ev.probs[k] : 0);
  const mods = ev.modalities || {};
  setBar("weight-image", mods.image ? mods.image.weight : 0);
  setBar("weight-text", mods.text ? mods.text.weight : 0);
  $("weights-kind").hidden = ev.weights !== "random";
  $("latency").textContent = `${fmt(ev.latency_ms, 0)} ms`;
  $("count").textContent = String(++estimates);
  points.push({ t: ev.t, score: ev.score, label: ev.label });
  if (points.length > MAX_POINTS) points = points.slice(-MAX_POINTS / 2);
  drawTimeline();
  if (Array.isArray(ev.faces)) onFaces(ev.t, ev.faces);
}

// People: one row per tracked face id with its label/score and a small rolling timeline.
function onFaces(t, faces) {
  $("people-card").hidden = false;
  for (const f of faces) {
    let p = people.get(f.id);
    if (!p) {
      const row = document.createElement("li");
      const text = document.createElement("b");
      const canvas = document.createElement("canvas");
      row.append(text, canvas);
      $("people").append(row);
      p = { points: [], row, text, canvas, lastT: t };
      people.set(f.id, p);
    }
    p.lastT = t;
    p.points.push({ t, score: f.score, label: f.label });
    if (p.points.length > MAX_POINTS / 4) p.points = p.points.slice(-MAX_POINTS / 8);
    p.text.textContent = `#${f.id} ${f.label} ${(f.score >= 0 ? "+" : "") + fmt(f.score, 2)}`;
    p.text.style.color = COLORS[f.label] || "";
  }
  const inView = new Set(faces.map((f) => f.id));
  for (const [id, p] of people) {
    p.row.classList.toggle("gone", !inView.has(id));
    if (t - p.lastT > TIMELINE_SECONDS) { p.row.remove(); people.delete(id); }
  }
  while (people.size > MAX_PEOPLE) {
    const [oldest] = [...people.entries()].sort((a, b) => a[1].lastT - b[1].lastT)[0];
    people.get(oldest).row.remove(); people.delete(oldest);
  }
  for (const p of people.values()) drawSpark(p.canvas, p.points, t);
}

function drawSpark(canvas, pts, now) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 160, h = canvas.clientHeight || 28;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const t0 = now - TIMELINE_SECONDS;
  const x = (t) => ((t - t0) / TIMELINE_SECONDS) * w, y = (s) => (1 - (s + 1) / 2) * (h - 2) + 1;
  g.strokeStyle = "#2c323c"; g.beginPath(); g.moveTo(0, y(0)); g.lineTo(w, y(0)); g.stroke();
  const visible = pts.filter((p) => p.t >= t0);
  for (const p of visible) { g.fillStyle = COLORS[p.label] || "#aaaaaa"; g.fillRect(x(p.t) - 1, y(p.score) - 1, 2.5, 2.5); }
}

function onTranscript(ev) {
  const text = (ev.text || "").trim();
  if (ev.final) {
    if (text) finals.push(text);
    if (finals.length > MAX_FINALS) finals = finals.slice(-MAX_FINALS);
    finalEnd = Math.max(finalEnd, ev.t_end);
    $("transcript-final").textContent = finals.join(" ");
    $("transcript-partial").textContent = "";
  } else if (ev.t_start >= finalEnd - 0.05) {
    // A partial is the uncommitted tail: shown after the committed words, replaced by the next.
    $("transcript-partial").textContent = (finals.length ? " " : "") + text;
  }
  const box = $("transcript");
  box.scrollTop = box.scrollHeight;
}

const COLORS = { positive: "#3cc85a", negative: "#e63c32", neutral: "#aaaaaa" };

function drawTimeline() {
  const canvas = $("timeline");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 28, right = w - 6, top = 8, bottom = h - 18;
  const y = (s) => top + (1 - (s + 1) / 2) * (bottom - top);
  const now = points.length ? points[points.length - 1].t : 0;
  const t0 = Math.max(0, now - TIMELINE_SECONDS);
  const x = (t) => left + ((t - t0) / TIMELINE_SECONDS) * (right - left);

  // Background: positive half tinted green, negative half red; gridlines at +1, 0, -1.
  g.fillStyle = "rgba(60,200,90,0.07)"; g.fillRect(left, top, right - left, y(0) - top);
  g.fillStyle = "rgba(230,60,50,0.07)"; g.fillRect(left, y(0), right - left, bottom - y(0));
  g.strokeStyle = "#2c323c"; g.lineWidth = 1; g.font = "11px system-ui, sans-serif"; g.fillStyle = "#8d94a1";
  for (const s of [1, 0, -1]) {
    g.beginPath(); g.moveTo(left, y(s)); g.lineTo(right, y(s)); g.stroke();
    g.fillText(s > 0 ? "+1" : String(s), 4, y(s) + 4);
  }
  g.fillText(`${Math.round(t0)} s`, left, h - 4);
  g.fillText(`${Math.round(Math.max(now, TIMELINE_SECONDS))} s`, right - 34, h - 4);

  const visible = points.filter((p) => p.t >= t0);
  if (!visible.length) return;
  g.strokeStyle = "#e7e9ee"; g.lineWidth = 1.5; g.beginPath();
  visible.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.score)) : g.moveTo(x(p.t), y(p.score))));
  g.stroke();
  for (const p of visible) {
    g.fillStyle = COLORS[p.label] || "#aaaaaa";
    g.beginPath(); g.arc(x(p.t), y(p.score), 2.5, 0, 2 * Math.PI); g.fill();
  }
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => { retries = 0; stop(); });
window.addEventListener("resize", drawTimeline);
// pagehide (not beforeunload): fires on reload, close and navigation, and keeps the back/forward cache.
window.addEventListener("pagehide", () => stop());
drawTimeline();
