// Plain JS client of the JSON API: voices (and uploads), submit, poll the job list, listen to the
// chunks finished so far, play, download, cancel.
"use strict";
const $ = (id) => document.getElementById(id);
let voices = [];

// A failure that means the service is out of reach for now (no answer, or the front door's 502/503/504
// while the pair fails over), as opposed to an answer that refuses the request.
class Unreachable extends Error {}

async function api(method, path, body, headers) {
  const opts = { method, credentials: "same-origin", headers: { ...(headers || {}) } };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let res;
  try { res = await fetch(path, opts); } catch (e) { throw new Unreachable("the service does not answer"); }
  let data = {};
  try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
  // 502/504: the front door found no node; 503: a node that cannot serve it now (not the primary during
  // a failover, Redis or storage away, nginx's "no TTS node is ready"): all of them pass by themselves.
  if ([502, 503, 504].includes(res.status)) throw new Unreachable(data.error || `HTTP ${res.status}`);
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  connection(true);
  return data;
}

// The banner that says the page cannot reach the service (a failover takes a few seconds); it goes
// by itself when an answer comes. Nothing typed is lost: the page never reloads.
// The sentence is a live region: it changes when the reason does; the seconds beside it are not read out.
let unreachableSince = null;
function connection(ok, why) {
  if (ok) {
    if (unreachableSince !== null) { unreachableSince = null; $("connection").hidden = true; }
    return;
  }
  if (unreachableSince === null) unreachableSince = Date.now();
  const text = `Reconnecting to the service… (${why || "no answer"}) Your script and your jobs are safe; ` +
    "the page carries on by itself.";
  if ($("connection-text").textContent !== text) $("connection-text").textContent = text;
  $("connection-time").textContent = ` ${Math.round((Date.now() - unreachableSince) / 1000)} s`;
  $("connection").hidden = false;
}

function idempotencyKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain HTTP too.
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- The script editor: what the service makes of the script, as you type (POST /api/script/check) ----
let speakers = [{ speaker: 1, name: "Speaker 1" }, { speaker: 2, name: "Speaker 2" }];   // until checked
let checkTimer = null, checkSeq = 0;

function clockText(seconds) {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

function scriptChanged() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkScript, 300);
}

async function checkScript() {
  const seq = ++checkSeq;
  let r;
  try { r = await api("POST", "/api/script/check", { script: $("script").value }); }
  catch (e) { if (e instanceof Unreachable) connection(false, e.message); return; }
  if (seq !== checkSeq) return;                        // a newer check is on its way
  $("script-info").textContent = `${r.chars.toLocaleString()} of ${r.max_chars.toLocaleString()} characters` +
    (r.error ? "" : ` · about ${clockText(r.estimate_s)} of audio · ${r.speakers.length} ` +
                    `speaker${r.speakers.length === 1 ? "" : "s"}`);
  if ($("script-error").textContent !== (r.error || "")) $("script-error").textContent = r.error || "";
  $("script").setAttribute("aria-invalid", r.error ? "true" : "false");
  const same = (a, b) => JSON.stringify(a.map((x) => [x.speaker, x.name])) === JSON.stringify(b.map((x) => [x.speaker, x.name]));
  if (!r.error && !same(r.speakers, speakers)) {
    const numbers = (list) => list.map((x) => x.speaker).join();
    if (numbers(r.speakers) === numbers(speakers)) {   // the same speakers renamed: the pickers stay (and focus)
      speakers = r.speakers;
      for (const { speaker, name } of speakers) {
        const select = $(`voice-${speaker}`);
        select.parentElement.firstChild.textContent = `Voice for ${name}`;
        select.closest(".voice").querySelector("button.hear").setAttribute("aria-label", `Hear the voice chosen for ${name}`);
      }
    } else {
      const chosen = currentVoices();
      speakers = r.speakers;
      renderVoicePickers(chosen);
    }
  }
}

function currentVoices() {
  // speaker number -> chosen voice id, of the pickers shown now
  const chosen = {};
  for (const select of $("voices").querySelectorAll("select")) chosen[select.dataset.speaker] = select.value;
  return chosen;
}

const EXAMPLES = {
  "A short interview": "Host: Welcome back to the show. Today we talk about keeping services alive.\n" +
    "Guest: Thanks for having me. It is mostly about rehearsing failure.\n" +
    "Host: Rehearsing it how?\nGuest: On purpose, every week, with a stopwatch.",
  "Three friends planning a trip": "Maya: So, the mountains or the sea this year?\n" +
    "Tom: The sea. Last time it rained every single day in the mountains.\n" +
    "Ines: It rained at the sea too, Tom. I was there.\nMaya: Then we go where the trains are cheapest.",
  "Numbered speakers": "Speaker 1: Lines can also start with Speaker 1 to Speaker 4.\n" +
    "Speaker 2: A line without a name continues the turn above,\nlike this one.",
};

function fillExamples() {
  const select = $("examples");
  for (const title of Object.keys(EXAMPLES)) {
    const opt = document.createElement("option");
    opt.value = title; opt.textContent = title;
    select.appendChild(opt);
  }
  // Loaded with the button only: arrowing through the list must not replace what was typed.
  $("example-load").addEventListener("click", () => {
    const typed = $("script").value.trim();
    if (typed && !Object.values(EXAMPLES).includes(typed) &&
        !window.confirm("Replace the script in the editor with the example?")) return;
    $("script").value = EXAMPLES[select.value];
    scriptChanged();
    $("script").focus();
  });
}

async function loadVoices() {
  const data = await api("GET", "/api/voices");
  voices = data.voices;
  engineRate = data.sample_rate;
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
    const chosen = currentVoices();
    await loadVoices();
    renderVoicePickers(chosen);
  } catch (e) {
    setMessage(e.message, true);
  } finally {
    $("clip-upload").disabled = false;
  }
}

function renderVoicePickers(chosen) {
  // One picker per speaker the script has, labelled with the script's own name for them.
  const box = $("voices");
  box.textContent = "";
  speakers.forEach(({ speaker, name }, k) => {
    const cell = document.createElement("div");
    cell.className = "voice";
    const label = document.createElement("label");
    label.textContent = `Voice for ${name}`;
    const select = document.createElement("select");
    select.id = `voice-${speaker}`;
    select.dataset.speaker = String(speaker);
    voices.forEach((v, i) => {
      const opt = document.createElement("option");
      opt.value = v.id; opt.textContent = v.name;
      if (chosen && chosen[speaker] ? chosen[speaker] === v.id : i === k % voices.length) opt.selected = true;
      select.appendChild(opt);
    });
    label.appendChild(select);
    cell.appendChild(label);
    const hear = document.createElement("button");
    hear.type = "button"; hear.className = "hear"; hear.textContent = "Hear";
    hear.setAttribute("aria-label", `Hear the voice chosen for ${name}`);
    hear.addEventListener("click", () => playPreview(select.value));
    cell.appendChild(hear);
    box.appendChild(cell);
  });
  renderMyVoices();
}

// A few seconds of a voice (GET /api/voices/<id>/preview: made once, kept on shared storage).
const previewPlayer = new Audio();
function playPreview(voiceId) {
  previewPlayer.src = `/api/voices/${encodeURIComponent(voiceId)}/preview`;
  previewPlayer.play().catch((e) => setMessage(`The preview did not play: ${e.message}`, true));
}

// The session's own uploads, each with a Delete button (refused while one of its jobs uses it).
function renderMyVoices() {
  const list = $("my-voices");
  list.textContent = "";
  for (const v of voices.filter((x) => x.uploaded)) {
    const li = document.createElement("li");
    li.textContent = `${v.name} (${(v.seconds || 0).toFixed(1)} s) `;
    const del = document.createElement("button");
    del.type = "button"; del.className = "delete"; del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete the voice ${v.name}`);
    del.addEventListener("click", async () => {
      try {
        await api("DELETE", `/api/voices/${v.id}`);
        setMessage(`Voice "${v.name}" deleted.`, false);
        const chosen = currentVoices();
        await loadVoices();
        renderVoicePickers(chosen);
      } catch (e) { setMessage(e.message, true); }
    });
    li.appendChild(del);
    list.appendChild(li);
  }
}

// What a recording is before it is uploaded: its length and level, read by the browser.
async function describeClip() {
  const file = $("clip").files[0];
  $("clip-info").textContent = "";
  if (!file) return;
  try {
    const ctx = new OfflineAudioContext(1, 1, 48000);
    const audio = await ctx.decodeAudioData(await file.arrayBuffer());
    const data = audio.getChannelData(0);
    let peak = 0, sum = 0;
    for (const x of data) { peak = Math.max(peak, Math.abs(x)); sum += x * x; }
    const db = (v) => (v > 0 ? `${(20 * Math.log10(v)).toFixed(1)} dBFS` : "silent");
    const rms = Math.sqrt(sum / Math.max(data.length, 1));
    const problems = [];
    if (audio.duration < 3) problems.push("shorter than 3 s");
    if (audio.duration > 60) problems.push("longer than 60 s");
    if (peak >= 0.999) problems.push("clipped");
    if (rms > 0 && rms < 0.01) problems.push("very quiet");
    $("clip-info").textContent = `${audio.duration.toFixed(1)} s · peak ${db(peak)} · level ${db(rms)} (RMS)` +
      (problems.length ? ` · ${problems.join(", ")}` : "");
  } catch (e) {
    $("clip-info").textContent = "The browser cannot read this file as audio.";
  }
}

function setMessage(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function submit() {
  const chosen = currentVoices();
  $("submit").disabled = true;
  try {
    // One Idempotency-Key per click: a retry (ours below, or nginx's on the other node) of the same
    // click returns the same job instead of creating a second one.
    const key = idempotencyKey();
    const body = { script: $("script").value, voices: chosen };
    if ($("title").value.trim()) body.title = $("title").value.trim();
    if ($("seed").value !== "") body.seed = Number($("seed").value);
    for (const name of ["cfg_scale", "diffusion_steps"]) {   // only on engines that have them
      const field = $(name);
      if (field && field.value !== "") body[name] = Number(field.value);
    }
    let job;
    for (let attempt = 1; ; attempt++) {
      try { job = await api("POST", "/api/jobs", body, { "Idempotency-Key": key }); break; }
      catch (e) {
        if (attempt >= 3 || !(e instanceof Unreachable || /unavailable|HTTP 50/.test(e.message))) throw e;
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

function queueText(job) {
  // "2nd in the queue · starts in about 1 min 10 s · done in about 3 min": from the API's estimates
  // (the worker's measured pace); nothing where there is no estimate yet.
  const about = (s) => (s === null || s === undefined ? null : `about ${clockText(s)}`);
  const parts = [];
  if (job.queue_position) {
    const n = job.queue_position;
    parts.push(n === 1 ? "next in the queue" : `${n}${["th", "st", "nd", "rd"][(n % 100 > 10 && n % 100 < 14) || n % 10 > 3 ? 0 : n % 10]} in the queue`);
    if (about(job.estimated_start_s)) parts.push(`starts in ${about(job.estimated_start_s)}`);
  }
  if (about(job.estimated_finish_s)) parts.push(`done in ${about(job.estimated_finish_s)}`);
  return parts.join(" · ");
}

function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.id = job.id;
  li.className = "job";
  const row = document.createElement("div");
  row.className = "row";
  const title = document.createElement("span");
  const estimate = job.duration_estimate_s ? ` of ~${job.duration_estimate_s.toFixed(0)} s` : "";
  const name = document.createElement("b");
  name.className = "title";
  name.textContent = job.title || job.id.slice(0, 8);
  title.append(name, ` · ${clockText(job.duration_s)}${estimate ? ` of ~${clockText(job.duration_estimate_s)}` : ""} of audio · ` +
    `${job.segments_done}/${job.segments_total} chunks` + (job.node ? ` · ${job.node}` : ""));
  const status = document.createElement("span");
  status.className = `status ${job.status}`;
  status.textContent = job.status;
  row.append(title, status);
  li.appendChild(row);
  const when = queueText(job);
  if (when) {
    const line = document.createElement("div");
    line.className = "queue"; line.textContent = when;
    li.appendChild(line);
  }
  const bar = document.createElement("progress");
  bar.max = Math.max(job.segments_total, 1);
  bar.value = job.segments_done;
  bar.setAttribute("aria-label", `Progress of job ${job.id.slice(0, 8)}: ${job.segments_done} of ${job.segments_total} chunks`);
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
    cancel.setAttribute("aria-label", `Cancel job ${job.id.slice(0, 8)}`);
    cancel.addEventListener("click", async () => {
      try { await api("DELETE", `/api/jobs/${job.id}`); await refresh(); }
      catch (e) { setMessage(e.message, true); }
    });
    li.appendChild(cancel);
    if (job.segments_done > 0) {
      const listen = document.createElement("button");
      listen.className = "listen"; listen.textContent = "Listen so far";
      listen.setAttribute("aria-label", `Listen so far to job ${job.id.slice(0, 8)}`);
      listen.addEventListener("click", () => listenTo(job));
      li.appendChild(listen);
    }
  }
  if (job.status === "done") {
    const player = document.createElement("audio");
    player.controls = true; player.preload = "metadata";
    player.src = `/api/jobs/${job.id}/audio`;
    player.setAttribute("aria-label", `Audio of job ${job.id.slice(0, 8)}`);
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
  if (["done", "failed", "cancelled"].includes(job.status)) {
    const again = document.createElement("button");
    again.type = "button"; again.className = "again"; again.textContent = "Run again";
    again.setAttribute("aria-label", `Run ${job.title || job.id.slice(0, 8)} again: fill the editor with it`);
    again.addEventListener("click", () => runAgain(job));
    const del = document.createElement("button");
    del.type = "button"; del.className = "delete"; del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${job.title || job.id.slice(0, 8)} and its audio`);
    del.addEventListener("click", async () => {
      if (!window.confirm(`Delete "${job.title || job.id.slice(0, 8)}" and its audio? This cannot be undone.`)) return;
      try { await api("DELETE", `/api/jobs/${job.id}?purge=1`); setMessage("Deleted.", false); await refresh(); }
      catch (e) { setMessage(e.message, true); }
    });
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(again, del);
    li.appendChild(actions);
  }
  return li;
}

// "Run again": what the job asked for, back in the editor (script, title, seed, voices) to change or
// submit as it is.
async function runAgain(job) {
  try {
    const asked = await api("GET", `/api/jobs/${job.id}/request`);
    $("script").value = asked.script;
    $("title").value = asked.title || "";
    $("seed").value = asked.seed ?? "";
    await checkScript();
    for (const [speaker, voice] of Object.entries(asked.voices || {})) {
      const select = $(`voice-${speaker}`);
      if (select && [...select.options].some((o) => o.value === voice)) select.value = voice;
    }
    setMessage(`The editor holds "${asked.title || job.id.slice(0, 8)}" again: change it or press Synthesise.`, false);
    $("script").focus();
  } catch (e) { setMessage(e.message, true); }
}

const rendered = new Map();  // id -> JSON of what is shown, so finished players are not rebuilt
let jobsShown = [];
async function refresh() {
  let data;
  try { data = await api("GET", "/api/jobs"); } catch (e) { if (e instanceof Unreachable) connection(false, e.message); return; }
  jobsShown = data.jobs;
  $("empty").hidden = data.jobs.length > 0;
  const list = $("jobs");
  const seen = new Set();
  data.jobs.forEach((job, i) => {
    seen.add(job.id);
    const key = JSON.stringify(job);
    let li = list.querySelector(`li[data-id="${job.id}"]`);
    if (!li || rendered.get(job.id) !== key) {
      const fresh = jobItem(job);
      // A row is rebuilt when its job changes: the keyboard's place in it (a button) comes along.
      const focused = li && li.contains(document.activeElement) ? document.activeElement.className : null;
      if (li) list.replaceChild(fresh, li); else list.insertBefore(fresh, list.children[i] || null);
      if (focused) { const again = fresh.getElementsByClassName(focused)[0]; if (again) again.focus(); }
      rendered.set(job.id, key);
    }
  });
  for (const li of [...list.children]) { if (!seen.has(li.dataset.id)) li.remove(); }
}

// ---- Listening while a job runs: its chunks as one continuous stream (listen-worklet.js) ----
// Each committed chunk (a WAV on shared storage, served by whichever node is primary) is fetched in
// order, decoded at its own sample rate and handed to the audio thread, which plays the chunks back to
// back. Playback starts once PREBUFFER_S seconds wait; if generation falls behind (or the pair fails
// over) it pauses, says so, and goes on from the same sample when the next chunks come.
const PREBUFFER_S = 3;

function wavRate(bytes) {
  const view = new DataView(bytes);
  return view.getUint32(24, true);   // the fmt chunk's sample rate (our WAVs: RIFF, fmt first)
}

// How far ahead of playback the page fetches: beyond it, it waits (memory stays bounded however fast
// the generation runs).
const AHEAD_S = 30;

class Listener {
  constructor(job, record, rate) {
    this.job = job; this.record = record; this.rate = rate;
    this.next = 0; this.ended = false; this.stopped = false; this.busy = false; this.received = 0;
    this.names = new Map();    // index -> the chunk file it played (a failover may generate one again)
    this.regenerated = [];
    // Made in the click's turn (Safari starts audio only from a user's gesture), at the audio's rate.
    this.ctx = new AudioContext({ sampleRate: rate });
    this.ctx.resume();
    this.ready = this.open();
  }

  async open() {
    await this.ctx.audioWorklet.addModule(LISTEN_WORKLET);
    if (this.stopped) return;
    this.node = new AudioWorkletNode(this.ctx, "chunk-stream", {
      numberOfInputs: 0, outputChannelCount: [1], processorOptions: { prebuffer: PREBUFFER_S * this.rate } });
    this.node.connect(this.ctx.destination);
    if (this.record) this.node.port.postMessage({ record: true });
  }

  report() {
    if (!this.node || this.stopped) return Promise.resolve(null);
    return new Promise((resolve) => {
      const answer = (event) => {
        if (!event.data.report) return;
        this.node.port.removeEventListener("message", answer);
        resolve(event.data);
      };
      this.node.port.addEventListener("message", answer);
      this.node.port.start();
      this.node.port.postMessage({ report: true });
    });
  }

  async poll(job) {
    if (this.busy || this.ended || this.stopped) return;
    this.busy = true;
    try {
      await this.ready;
      const r = await this.report();
      if (this.stopped || (r && r.queued > AHEAD_S * this.rate)) return;
      const data = await api("GET", `/api/jobs/${this.job}/chunks`);
      if (this.stopped) return;
      const byIndex = new Map(data.chunks.map((c) => [c.index, c]));
      for (const [index, name] of this.names) {
        const now = byIndex.get(index);
        if (now && now.name !== name && !this.regenerated.includes(index)) this.regenerated.push(index);
      }
      for (let fetched = 0; byIndex.has(this.next) && fetched < 8; fetched++) {
        const chunk = byIndex.get(this.next);
        let res;
        try { res = await fetch(chunk.url, { credentials: "same-origin" }); }
        catch (e) { throw new Unreachable("the service does not answer"); }
        if (!res.ok) throw new Unreachable(`HTTP ${res.status}`);
        const bytes = await res.arrayBuffer();
        if (this.stopped) return;
        if (wavRate(bytes) !== this.rate) throw new Error(`chunk ${chunk.index} is at ${wavRate(bytes)} Hz, not ${this.rate}`);
        const samples = (await this.ctx.decodeAudioData(bytes)).getChannelData(0).slice();
        if (this.stopped) return;
        this.received += samples.length;                  // (before the transfer empties it)
        this.node.port.postMessage({ samples }, [samples.buffer]);
        this.names.set(chunk.index, chunk.name);
        this.next += 1;
      }
      // A finished job's chunks are all committed before its status says so: none left, the end.
      if (job && ["done", "failed", "cancelled"].includes(job.status) && !byIndex.has(this.next)) {
        this.ended = true;
        this.node.port.postMessage({ end: true });
      }
    } catch (e) {
      if (this.stopped) return;
      if (e instanceof Unreachable) connection(false, e.message); else setMessage(e.message, true);
    } finally {
      this.busy = false;
    }
  }

  async show() {
    const r = await this.report();
    if (this.stopped) return;
    const clock = (samples) => {
      const s = Math.floor(samples / (this.rate || 1));
      return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    };
    // The state is a live region: it changes when the state does; the running counts are not read out.
    let state = "waiting for the first chunk…";
    if (r) state = r.waiting && !this.ended ? "buffering…" : r.queued === 0 && this.ended ? "finished" : "playing";
    if (this.regenerated.length) {
      state += ` (chunk ${this.regenerated.map((i) => i + 1).join(", ")} was generated again after you heard ` +
        "it: the final file differs there)";
    }
    if ($("listen-state").textContent !== state) $("listen-state").textContent = state;
    $("listen-progress").textContent = r ? `heard ${clock(r.played)} of ${clock(this.received)} generated so far` +
      (r.waiting && !this.ended ? ` · ${clock(r.queued)} ready` : "") : "";
  }

  stop() {
    this.stopped = this.ended = true;
    this.ctx.close();
  }
}

let listener = null;
let engineRate = 0;   // the engine's sample rate (GET /api/voices): the listener's AudioContext runs at it
const LISTEN_WORKLET = document.currentScript.dataset.worklet;

function listenTo(job) {
  if (listener) listener.stop();
  listener = new Listener(job.id, new URLSearchParams(location.search).has("record"), engineRate);
  window.ttsListener = listener;   // the browser tests read what it played
  $("preview-title").textContent = `Listening: ${job.title || job.id.slice(0, 8)}`;
  $("listen-state").textContent = "";
  $("preview").hidden = false;
  listener.poll(job);
}

async function refreshPreview() {
  if (!listener) return;
  await listener.poll(jobsShown.find((j) => j.id === listener.job));
  await listener.show();
}

async function main() {
  try { await loadVoices(); } catch (e) { setMessage(e.message, true); }
  renderVoicePickers();
  fillExamples();
  $("script").addEventListener("input", scriptChanged);
  checkScript();
  $("submit").addEventListener("click", submit);
  $("clip-upload").addEventListener("click", uploadClip);
  $("clip").addEventListener("change", describeClip);
  await refresh();
  setInterval(async () => { await refresh(); refreshPreview(); }, 1000);
  $("listen-stop").addEventListener("click", () => { if (listener) listener.stop(); listener = null;
                                                      $("preview").hidden = true; });
}
main();
