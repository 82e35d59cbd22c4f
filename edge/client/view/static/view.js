"use strict";
// The operator view. Live state arrives as `snapshot` server-sent events (see edge/client/view/state.py);
// the gallery is polled. The server decides what is down; this page only draws it, and turns everything
// red itself when the server stops talking.

const $ = (sel, root = document) => root.querySelector(sel);
const VERDICT_COLOURS = { ok: "#3fb950", defect: "#ff4d4d", review: "#f0b400", unknown: "#8b949e" };
const LINK_LIMIT_MS = 3000; // no snapshot for this long: the view server (or the network to it) is gone
const LABEL_TEXT = { false_reject: "false reject", confirmed: "confirmed" };

const view = { config: null, cameras: new Map(), lastMessageMs: 0, clockOffsetMs: 0 };

const fmt = (x) => (x == null ? "–" : Number(x).toPrecision(4));

async function main() {
  view.config = await (await fetch("/api/config")).json();
  drawLegend(view.config.scale);
  const events = new EventSource("/events");
  events.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  setInterval(watchLink, 500);
  if (view.config.gallery) {
    $("#gallery-hint").textContent = view.config.review
      ? "Mark each reject: copies go to the review folder for recalibration."
      : "Start the view with --review DIR to mark rejects.";
    refreshGallery();
    setInterval(refreshGallery, 3000);
  } else {
    $("#gallery-hint").textContent = "Start the view with --archive DIR (the daemon's archive) to list rejects.";
  }
}

function drawLegend(stops) {
  const max = stops[stops.length - 1].ratio;
  const parts = stops.map((s) => `rgba(${s.rgba.join(",")}) ${((s.ratio / max) * 100).toFixed(2)}%`);
  $("#legend .bar").style.background = `linear-gradient(to right, ${parts.join(", ")})`;
}

// --- live cameras -------------------------------------------------------------------------------------
function onSnapshot(s) {
  view.lastMessageMs = Date.now();
  view.clockOffsetMs = s.now_ms - Date.now();
  document.body.classList.remove("disconnected");
  $("#link").textContent = `live · ${s.daemons.length} inspector(s)`;
  for (const cam of s.cameras) updateCamera(cam, s.points[cam.camera] || []);
  const down = s.cameras.filter((c) => c.status === "down").map((c) => c.camera);
  if (!s.heard_any) showAlarm("No heartbeat from any inspector yet: treat the line as not inspected.");
  else if (down.length) showAlarm(`Not inspecting: ${down.join(", ")}`);
  else showAlarm(null);
}

function showAlarm(text) {
  const alarm = $("#alarm");
  alarm.hidden = !text;
  alarm.textContent = text || "";
}

function watchLink() {
  if (Date.now() - view.lastMessageMs <= LINK_LIMIT_MS) return;
  document.body.classList.add("disconnected");
  $("#link").textContent = "view server unreachable";
  showAlarm("The view lost its server: what is shown is stale. Treat the line as not inspected.");
}

function cameraCard(name) {
  let card = view.cameras.get(name);
  if (!card) {
    const node = $("#camera-card").content.firstElementChild.cloneNode(true);
    node.dataset.camera = name;
    $(".name", node).textContent = name;
    $("#cameras").append(node);
    card = { node, points: [], version: 0 };
    view.cameras.set(name, card);
  }
  return card;
}

function setFact(node, field, text) {
  node.querySelector(`[data-f="${field}"]`).textContent = text;
}

function updateCamera(cam, points) {
  const card = cameraCard(cam.camera);
  const n = card.node;
  n.className = `camera ${cam.status}`;
  $(".status-text", n).textContent = { ok: "inspecting", warn: "warning", down: "DOWN" }[cam.status];
  $(".why", n).textContent = cam.why;
  const verdict = n.querySelector('[data-f="verdict"]');
  verdict.textContent = cam.verdict ?? "–";
  verdict.className = `verdict-${cam.verdict ?? "none"}`;
  setFact(n, "score", fmt(cam.score));
  const band = cam.review_threshold != null ? ` · review above ${fmt(cam.review_threshold)}` : "";
  setFact(n, "threshold", fmt(cam.threshold) + band);
  setFact(n, "frame", cam.seq == null ? "none yet" : `#${cam.seq} · ${cam.regions} region(s)${cam.reason ? " · " + cam.reason : ""}`);
  setFact(n, "fps", cam.fps == null ? "–" : cam.fps.toFixed(1));
  setFact(n, "drops", `${cam.frames_dropped ?? cam.dropped} by the inspector · ${cam.lost} lost on the way`);
  setFact(n, "state", cam.state ?? "unknown");
  setFact(n, "heartbeat", cam.heartbeat_age_s == null ? "never" : `${cam.heartbeat_age_s.toFixed(1)} s ago (${cam.daemon})`);
  setFact(n, "model", cam.model_id ? cam.model_id.slice(0, 12) : "–");
  const hasDrift = cam.drift_state != null;
  n.querySelectorAll(".drift").forEach((el) => (el.hidden = !hasDrift));
  if (hasDrift) setFact(n, "drift", `${cam.drift_state}${cam.drift != null ? " · " + fmt(cam.drift) : ""}`);

  if (cam.frame_version && cam.frame_version !== card.version) {
    card.version = cam.frame_version;
    const img = $(".overlay", n);
    const seq = cam.seq;
    img.onload = () => (img.dataset.seq = String(seq)); // what the picture shows, once it is there
    img.src = `/live/${encodeURIComponent(cam.camera)}/overlay.png?v=${cam.frame_version}`;
  }
  const windowMs = view.config.history_s * 1000;
  const nowMs = Date.now() + view.clockOffsetMs;
  card.points.push(...points);
  while (card.points.length && card.points[0][0] < nowMs - windowMs) card.points.shift();
  drawChart($(".chart", n), card.points, nowMs, windowMs);
}

// points: [received_ms, score, threshold, review_threshold, verdict], oldest first
function drawChart(canvas, points, nowMs, windowMs) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, t0 = nowMs - windowMs;
  ctx.clearRect(0, 0, w, h);
  let top = 0;
  for (const p of points) top = Math.max(top, p[1] ?? 0, p[2] ?? 0);
  top = top > 0 ? top * 1.15 : 1;
  const x = (t) => ((t - t0) / windowMs) * w;
  const y = (v) => h - (v / top) * h;
  const right = (i) => (i + 1 < points.length ? x(points[i + 1][0]) : w);

  let band = false; // the uncertain band, only where the header carried a second threshold
  ctx.fillStyle = "rgba(240, 180, 0, 0.22)";
  points.forEach((p, i) => {
    if (p[2] == null || p[3] == null) return;
    band = true;
    ctx.fillRect(x(p[0]), y(p[2]), Math.max(1, right(i) - x(p[0])), y(p[3]) - y(p[2]));
  });

  ctx.strokeStyle = "#ff6a2a"; // the threshold, as a step line: a reload changes it between frames
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  let first = true, last = null;
  points.forEach((p, i) => {
    if (p[2] == null) return;
    ctx.moveTo(first ? 0 : x(p[0]), y(p[2])); // the first threshold seen also stands for the time before it
    ctx.lineTo(right(i), y(p[2]));
    first = false;
    last = p[2];
  });
  ctx.stroke();
  ctx.setLineDash([]);
  if (last != null) {
    ctx.fillStyle = "#ff6a2a";
    ctx.font = "11px sans-serif";
    ctx.fillText(`threshold ${fmt(last)}`, w - 110, Math.max(12, y(last) - 4));
  }

  for (const p of points) {
    ctx.fillStyle = VERDICT_COLOURS[p[4]] || VERDICT_COLOURS.unknown;
    if (p[1] == null) ctx.fillRect(x(p[0]), h - 4, 2, 4); // not scored: a tick on the floor
    else ctx.fillRect(x(p[0]) - 1.5, y(p[1]) - 1.5, 3, 3);
  }
  ctx.fillStyle = "#8b949e";
  ctx.font = "11px sans-serif";
  ctx.fillText(fmt(top), 4, 12);
  ctx.fillText(`last ${Math.round(windowMs / 1000)} s`, w - 70, h - 4);
  canvas.dataset.points = String(points.length);
  canvas.dataset.band = band ? "yes" : "no";
}

// --- gallery of rejects -------------------------------------------------------------------------------
async function refreshGallery() {
  let g;
  try {
    g = await (await fetch("/api/rejects")).json();
  } catch (e) {
    return; // the link watchdog reports a dead server
  }
  const box = $("#rejects");
  const keep = new Set(g.items.map((item) => item.id));
  for (const node of [...box.children]) if (!keep.has(node.dataset.id)) node.remove();
  for (const item of g.items) box.append(rejectNode(item, g.review)); // append moves: newest first, in order
}

function rejectNode(item, canMark) {
  let node = document.getElementById(`reject-${item.id}`);
  if (!node) {
    node = $("#reject-item").content.firstElementChild.cloneNode(true);
    node.id = `reject-${item.id}`;
    node.dataset.id = item.id;
    $("img", node).src = `/archive/${item.id.split("/").map(encodeURIComponent).join("/")}/overlay.png`;
    $(".what", node).textContent = `${item.camera} #${item.seq} · ${item.verdict}`;
    const when = new Date(item.capture_ns / 1e6);
    $("time", node).dateTime = when.toISOString();
    $("time", node).textContent = when.toLocaleString();
    $(".detail", node).textContent = `score ${fmt(item.score)} / ${fmt(item.threshold)} · model ${item.model_id.slice(0, 12)}`;
    node.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => mark(node, item.id, b.dataset.label)));
  }
  showMark(node, item.mark, canMark);
  return node;
}

function showMark(node, label, canMark) {
  node.dataset.mark = label || "";
  $(".mark", node).textContent = label ? `marked ${LABEL_TEXT[label]}` : "";
  node.querySelectorAll("button").forEach((b) => (b.disabled = !canMark || Boolean(label)));
}

async function mark(node, id, label) {
  $(".error", node).textContent = "";
  node.querySelectorAll("button").forEach((b) => (b.disabled = true));
  const r = await fetch("/api/mark", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id, label }),
  });
  const body = await r.json();
  if (r.ok) showMark(node, body.label, true);
  else {
    $(".error", node).textContent = body.error;
    showMark(node, node.dataset.mark || null, true);
  }
}

main();
