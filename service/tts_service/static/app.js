// Plain JS client of the JSON API: voices (and uploads), submit, poll the job list, listen to the
// chunks finished so far, play, download, cancel.
"use strict";
const $ = (id) => document.getElementById(id);
let voices = [];
let previewJob = null;

async function api(method, path, body, headers) {
  const opts = { method, credentials: "same-origin", headers: { ...(headers || {}) } };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  let data = {};
  try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function idempotencyKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain HTTP too.
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function speakersInScript() {
  const found = new Set();
  for (const line of $("script").value.split("\n")) {
    const m = /^\s*speaker\s*(\d+)\s*:/i.exec(line);
    if (m) found.add(Number(m[1]));
  }
  return found;
}

async function loadVoices() {
  const data = await api("GET", "/api/voices");
  voices = data.voices;
  $("upload").hidden = !data.uploads;   // only engines that take reference clips
}

async function uploadClip() {
  const file = $("clip").files[0];
  if (!file) { setMessage("Choose a WAV, FLAC or OGG file first.", true); return; }
  const form = new FormData();
  form.append("clip", file);
  form.append("name", $("clip-name").value || file.name);
  $("clip-upload").disabled = true;
  try {
    const res = await fetch("/api/voices", { method: "POST", body: form, credentials: "same-origin" });
    const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    setMessage(`Voice "${data.name}" added (${data.seconds.toFixed(1)} s).`, false);
    const chosen = [1, 2, 3, 4].map((s) => $(`voice-${s}`).value);
    await loadVoices();
    renderVoicePickers(chosen);
  } catch (e) {
    setMessage(e.message, true);
  } finally {
    $("clip-upload").disabled = false;
  }
}

function renderVoicePickers(chosen) {
  const box = $("voices");
  box.textContent = "";
  for (let s = 1; s <= 4; s++) {
    const label = document.createElement("label");
    label.textContent = `Speaker ${s}`;
    const select = document.createElement("select");
    select.id = `voice-${s}`;
    voices.forEach((v, i) => {
      const opt = document.createElement("option");
      opt.value = v.id; opt.textContent = v.name;
      if (chosen ? chosen[s - 1] === v.id : i === (s - 1) % voices.length) opt.selected = true;
      select.appendChild(opt);
    });
    label.appendChild(select);
    box.appendChild(label);
  }
}

function setMessage(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function submit() {
  const used = speakersInScript();
  const chosen = {};
  for (const s of used) { if (s >= 1 && s <= 4) chosen[String(s)] = $(`voice-${s}`).value; }
  $("submit").disabled = true;
  try {
    // One Idempotency-Key per click: a retry (ours below, or nginx's on the other node) of the same
    // click returns the same job instead of creating a second one.
    const key = idempotencyKey();
    const body = { script: $("script").value, voices: chosen };
    if ($("seed").value !== "") body.seed = Number($("seed").value);
    for (const name of ["cfg_scale", "diffusion_steps"]) {   // only on engines that have them
      const field = $(name);
      if (field && field.value !== "") body[name] = Number(field.value);
    }
    let job;
    for (let attempt = 1; ; attempt++) {
      try { job = await api("POST", "/api/jobs", body, { "Idempotency-Key": key }); break; }
      catch (e) {
        if (attempt >= 3 || !/unavailable|Failed to fetch|NetworkError|HTTP 50/.test(e.message)) throw e;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    setMessage(`Job ${job.id.slice(0, 8)} queued.`, false);
    await refresh();
  } catch (e) {
    setMessage(e.message, true);
  } finally {
    $("submit").disabled = false;
  }
}

function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.id = job.id;
  li.className = "job";
  const row = document.createElement("div");
  row.className = "row";
  const title = document.createElement("span");
  const estimate = job.duration_estimate_s ? ` of ~${job.duration_estimate_s.toFixed(0)} s` : "";
  title.textContent = `${job.id.slice(0, 8)} · ${job.duration_s.toFixed(1)} s${estimate} of audio · ` +
    `${job.segments_done}/${job.segments_total} chunks` + (job.node ? ` · ${job.node}` : "");
  const status = document.createElement("span");
  status.className = `status ${job.status}`;
  status.textContent = job.status;
  row.append(title, status);
  li.appendChild(row);
  const bar = document.createElement("progress");
  bar.max = Math.max(job.segments_total, 1);
  bar.value = job.segments_done;
  li.appendChild(bar);
  if (job.note) {
    const note = document.createElement("div");
    note.className = "note"; note.textContent = job.note;
    li.appendChild(note);
  }
  if (job.error) {
    const err = document.createElement("div");
    err.className = "err"; err.textContent = job.error;
    li.appendChild(err);
  }
  if (job.status === "queued" || job.status === "running") {
    const cancel = document.createElement("button");
    cancel.className = "cancel"; cancel.textContent = "Cancel";
    cancel.addEventListener("click", async () => {
      try { await api("DELETE", `/api/jobs/${job.id}`); await refresh(); }
      catch (e) { setMessage(e.message, true); }
    });
    li.appendChild(cancel);
    if (job.segments_done > 0) {
      const listen = document.createElement("button");
      listen.className = "listen"; listen.textContent = "Listen so far";
      listen.addEventListener("click", () => { previewJob = job.id; refreshPreview(true); });
      li.appendChild(listen);
    }
  }
  if (job.status === "done") {
    const player = document.createElement("audio");
    player.controls = true; player.preload = "metadata";
    player.src = `/api/jobs/${job.id}/audio`;
    const link = document.createElement("a");
    link.href = `/api/jobs/${job.id}/audio?download=1`;
    link.textContent = "Download WAV";
    link.className = "download";
    li.append(player, link);
    for (const [fmt, label] of [["flac", "FLAC (lossless)"], ["ogg", "Ogg Vorbis (smallest)"]]) {
      const other = document.createElement("a");
      other.href = `/api/jobs/${job.id}/audio?format=${fmt}&download=1`;
      other.textContent = label;
      other.className = `download-${fmt}`;
      li.append(" · ", other);
    }
  }
  return li;
}

const rendered = new Map();  // id -> JSON of what is shown, so finished players are not rebuilt
async function refresh() {
  let data;
  try { data = await api("GET", "/api/jobs"); } catch (e) { return; }
  $("empty").hidden = data.jobs.length > 0;
  const list = $("jobs");
  const seen = new Set();
  data.jobs.forEach((job, i) => {
    seen.add(job.id);
    const key = JSON.stringify(job);
    let li = list.querySelector(`li[data-id="${job.id}"]`);
    if (!li || rendered.get(job.id) !== key) {
      const fresh = jobItem(job);
      if (li) list.replaceChild(fresh, li); else list.insertBefore(fresh, list.children[i] || null);
      rendered.set(job.id, key);
    }
  });
  for (const li of [...list.children]) { if (!seen.has(li.dataset.id)) li.remove(); }
}

async function refreshPreview(reset) {
  // The chunks of the job being listened to: players are added, never rebuilt (playback goes on).
  if (!previewJob) return;
  const box = $("chunks");
  if (reset) { box.textContent = ""; $("preview-title").textContent = `Listen so far: ${previewJob.slice(0, 8)}`; }
  $("preview").hidden = false;
  let data;
  try { data = await api("GET", `/api/jobs/${previewJob}/chunks`); } catch (e) { return; }
  for (const chunk of data.chunks) {
    if (box.querySelector(`audio[data-index="${chunk.index}"]`)) continue;
    const player = document.createElement("audio");
    player.controls = true; player.preload = "none";
    player.dataset.index = chunk.index;
    player.src = chunk.url;
    player.addEventListener("ended", () => {   // play on into the next chunk
      const next = box.querySelector(`audio[data-index="${chunk.index + 1}"]`);
      if (next) next.play();
    });
    box.appendChild(player);
  }
}

async function main() {
  try { await loadVoices(); } catch (e) { setMessage(e.message, true); }
  renderVoicePickers();
  $("submit").addEventListener("click", submit);
  $("clip-upload").addEventListener("click", uploadClip);
  await refresh();
  setInterval(() => { refresh(); refreshPreview(false); }, 1000);
}
main();
