"""The JSON API under /api (docs/contracts.md): voices, submit, list, status, audio, cancel.

Every error is JSON {"error": "<sentence>"}. Writes are accepted only by the unfenced primary; a
standby answers 503 with Retry-After so that nginx retries on the other node.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
import unicodedata
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request, send_file

from . import heartbeat
from .audio import DOWNLOADS, encode_wav
from .engines import GENERATION_OPTIONS, EngineError
from .jobfiles import BadJobId, check_job_id, new_job_id
from .jobs import FINAL, public_job, session_id
from .journal import fields
from .node import Fenced
from .recovery import job_from_storage
from .retention import delete_quietly, forget
from .runtime import Runtime
from .script import MAX_SPEAKERS, ScriptError, clean_text, estimate_seconds, parse_script, segment_script, speakers_of
from .storage import StorageFull, StorageUnavailable
from .voices import MAX_CLIPS_PER_SESSION, VOICE_ID_RE, ClipError, decode_clip

bp = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("tts.api")
COOKIE = "tts_session"


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def _rt() -> Runtime:
    return current_app.extensions["tts"]


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    response = jsonify({"error": exc.message})
    response.status_code = exc.status
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@bp.errorhandler(redis.RedisError)
def _redis_error(exc: redis.RedisError):
    return _api_error(ApiError(503, f"job state (Redis) is unavailable on this node: {exc}", retry_after=2))


@bp.errorhandler(StorageUnavailable)
def _storage_error(exc: StorageUnavailable):
    return _api_error(ApiError(503, f"shared storage is unavailable: {exc}", retry_after=5))


# ---- sessions ----

def current_session() -> str | None:
    """The caller's session id, or None. Reading never creates one: clients without a cookie jar leave
    no state (what stores something makes it: _caller_session, _start_session)."""
    return _rt().sessions.lookup(request.cookies.get(COOKIE))


def _caller_session(sid: str | None, token: str | None = None) -> tuple[str, str | None]:
    """(sid, None) for a caller with a session (sid: current_session()); else (the id a new session
    will have, its cookie token), the session itself made by _start_session only once what it stores
    is durable: a refused request leaves no session behind. `token`: the new session's cookie (a keyed
    submit's, idempotent_session_token), else a random one."""
    if sid is not None:
        return sid, None
    token = token or secrets.token_urlsafe(32)
    return session_id(token), token


def _start_session(token: str | None, sid: str | None = None) -> None:
    """Make the new session (if any) in Redis and answer with its cookie; or, for a caller with a
    session, make sure Redis has it (a cookie kept while Redis had lost its data: Sessions.lookup)."""
    if token is not None:
        _rt().sessions.create(token)
        g.new_session_token = token
    elif sid is not None:
        _rt().sessions.ensure(sid)


@bp.after_app_request
def _set_cookie(response: Response) -> Response:
    token = g.pop("new_session_token", None)
    if token:
        response.set_cookie(COOKIE, token, max_age=_rt().settings.session_ttl_s, httponly=True,
                            samesite="Lax", secure=request.is_secure)
    return response


def require_primary() -> int:
    """The epoch this node is unfenced primary of; 503 + Retry-After otherwise."""
    try:
        return _rt().node.assert_primary().epoch
    except Fenced as exc:
        raise ApiError(503, f"this node does not accept writes: {exc}", retry_after=2) from None


def _owned_job(job_id: str) -> dict:
    """The job's Redis hash if it belongs to the caller's session; 404 otherwise (also for bad ids)."""
    try:
        check_job_id(job_id)
    except BadJobId:
        raise ApiError(404, "no such job") from None
    rt = _rt()
    sid = current_session()
    job = rt.store.get(job_id)
    if job is None and sid is not None:
        # Redis may have lost it (an async replica promoted): shared storage still knows.
        job = job_from_storage(rt.files, job_id)
    if job is None or sid is None or job.get("session") != sid:
        raise ApiError(404, "no such job")
    return job


# ---- endpoints ----

@bp.get("/voices")
def voices():
    rt = _rt()
    listed = [v.to_dict() for v in rt.engine.voices()]
    if rt.engine.takes_reference_clips:
        listed += [{"id": v["id"], "name": v["name"], "engine": v["engine"], "uploaded": True,
                    "seconds": v.get("seconds")} for v in rt.voices.list(current_session())]
    return jsonify({"voices": listed, "uploads": rt.engine.takes_reference_clips,
                    "sample_rate": rt.engine.sample_rate})


MAX_CLIP_BYTES = 32 * 1024 * 1024


@bp.post("/voices")
def upload_voice():
    """A reference clip of the session's own (docs/contracts.md): multipart field `clip`, plus `name`."""
    rt = _rt()
    if not rt.engine.takes_reference_clips:
        raise ApiError(400, f"the {rt.engine.name} engine takes no reference clips")
    request.max_content_length = MAX_CLIP_BYTES + 65536   # larger than a script's limit (app.py)
    if request.content_length is not None and request.content_length > MAX_CLIP_BYTES:
        raise ApiError(413, f"the upload is {request.content_length} bytes; a clip is at most "
                            f"{MAX_CLIP_BYTES // (1024 * 1024)} MB (60 s)")
    upload = request.files.get("clip")
    if upload is None:
        raise ApiError(400, "send the clip as a multipart form field named 'clip' (WAV, FLAC or OGG, 3-60 s)")
    name = (request.form.get("name") or upload.filename or "my voice").strip()[:64]
    if not name or any(ord(ch) < 32 for ch in name):
        raise ApiError(400, "'name' must be 1 to 64 printable characters")
    require_primary()
    client = request.remote_addr or "unknown"   # counted before any decoding: a flood costs its sender
    wait = rt.store.hit_rate_limit("voices-client", client, rt.settings.uploads_per_client_hour, window_s=3600)
    if wait:
        raise ApiError(429, f"too many clips uploaded from this client address ({rt.settings.uploads_per_client_hour} "
                            f"an hour); try again in {wait} s", retry_after=wait)
    data = upload.read(MAX_CLIP_BYTES + 1)
    if len(data) > MAX_CLIP_BYTES:
        raise ApiError(413, "the clip is larger than 32 MB")
    try:
        samples = decode_clip(data)
    except ClipError as exc:
        raise ApiError(400, str(exc)) from None
    sid, token = _caller_session(current_session())
    wait = rt.store.hit_rate_limit("voices", sid, rt.settings.rate_limit_per_session)
    if wait:
        raise ApiError(429, f"too many clips uploaded from this session; try again in {wait} s", retry_after=wait)
    if len(rt.voices.list(sid)) >= MAX_CLIPS_PER_SESSION:
        raise ApiError(400, f"this session has {MAX_CLIPS_PER_SESSION} voices already, the most it may keep")
    require_primary()   # fresh read right before the durable write
    try:
        info = rt.voices.save(sid, name, samples, rt.engine.name)
    except StorageFull:
        raise ApiError(503, "shared storage is full; the clip was not stored", retry_after=30) from None
    _start_session(token, sid)
    return jsonify({"id": info["id"], "name": info["name"], "engine": info["engine"],
                    "seconds": info["seconds"]}), 201


@bp.delete("/voices/<voice_id>")
def delete_voice(voice_id: str):
    """A clip the session uploaded, gone; refused while an unfinished job of the session speaks with it."""
    rt = _rt()
    sid = current_session()
    if not sid or not VOICE_ID_RE.match(voice_id) or voice_id not in {v["id"] for v in rt.voices.list(sid)}:
        raise ApiError(404, "no such voice among this session's uploads")
    require_primary()
    for job in rt.store.session_jobs(sid):
        if job.get("status") in ("queued", "running") and voice_id in rt.files.request(job["id"]).get("voices", {}).values():
            raise ApiError(400, f"job {job['id'][:8]} ({job.get('status')}) speaks with this voice: cancel it or "
                                "wait until it ends")
    rt.voices.delete(sid, voice_id)
    return jsonify({"id": voice_id, "deleted": True})


PREVIEW_TEXT = "Hello! This is how I sound. I can read your script, one turn at a time."


@bp.get("/voices/<voice_id>/preview")
def voice_preview(voice_id: str):
    """A few seconds of a voice. The engine's voices: made once and kept on shared storage
    (voices/previews/), espeak speaking PREVIEW_TEXT, VibeVoice's voices their reference clip (what the
    model imitates); an upload of the session's own: the clip itself."""
    rt = _rt()
    if VOICE_ID_RE.match(voice_id):
        sid = current_session()
        try:
            path = rt.voices.path(sid, voice_id) if sid else None
        except FileNotFoundError:
            path = None
        if path is None:
            raise ApiError(404, "no such voice among this session's uploads")
        return _send(path, "audio/flac" if path.suffix == ".flac" else "audio/wav", f"{voice_id}{path.suffix}")
    known = {v.id: v for v in rt.engine.voices()}
    if voice_id not in known:
        raise ApiError(404, f"no voice {voice_id!r}")
    folder = rt.settings.shared_dir / "voices" / "previews"
    path = folder / f"{rt.engine.name}-{voice_id}.wav"
    if not rt.storage.exists(path):
        require_primary()   # only the primary writes to shared storage
        try:
            samples = rt.engine.preview(voice_id, PREVIEW_TEXT)
        except EngineError as exc:
            raise ApiError(503, f"no preview of {voice_id} now: {exc}", retry_after=30) from None
        rt.storage.makedirs(folder)
        try:
            rt.storage.commit_new(path, encode_wav(samples, rt.engine.sample_rate))   # the first one made stays
        except StorageFull:
            raise ApiError(503, "shared storage is full; no preview now", retry_after=30) from None
    return _send(path, "audio/wav", f"preview-{voice_id}.wav")


@bp.post("/script/check")
def check_script():
    """What the page shows as you type: the script's speakers by name, its length against the limit,
    the audio it makes (estimated), and the first problem a submit would refuse it for (or null).
    Reads only: any node answers, nothing is stored, no session is made."""
    settings = _rt().settings
    if request.content_length is not None and request.content_length > settings.max_script_chars * 4 + 65536:
        raise ApiError(413, f"the request is {request.content_length} bytes; scripts are limited to "
                            f"{settings.max_script_chars} characters")
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict) or not isinstance(body.get("script"), str):
        raise ApiError(400, "send {\"script\": \"...\"} as JSON")
    script = body["script"]
    answer = {"chars": len(script), "max_chars": settings.max_script_chars, "speakers": [], "estimate_s": 0.0,
              "error": None}
    if len(script) > settings.max_script_chars:
        answer["error"] = f"the script is {len(script)} characters; the limit is {settings.max_script_chars}"
        return jsonify(answer)
    try:
        turns, names = parse_script(script)
    except ScriptError as exc:
        answer["error"] = str(exc)
        return jsonify(answer)
    answer["speakers"] = [{"speaker": n, "name": name, "turns": sum(1 for s, _ in turns if s == n)}
                          for n, name in names.items()]
    answer["estimate_s"] = round(estimate_seconds(" ".join(text for _, text in turns)), 1)
    return jsonify(answer)


MAX_TITLE = 120


def _title(given: object, segments) -> str:
    """The job's title: the one given (1-120 printable characters), else its first words."""
    if given is None or given == "":
        words = segments[0].text.split() if segments else []
        first = " ".join(words[:10])
        return first if len(first) <= 60 else first[:59].rstrip() + "…"
    # Printable: no control, format (bidi overrides), surrogate, private-use or unassigned character.
    if not isinstance(given, str) or len(given.strip()) == 0 or len(given) > MAX_TITLE or \
            any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in given):
        raise ApiError(400, f"'title' must be 1 to {MAX_TITLE} printable characters")
    return given.strip()


@bp.post("/jobs")
def submit():
    rt = _rt()
    settings = rt.settings
    if request.content_length is not None and request.content_length > settings.max_script_chars * 4 + 65536:
        raise ApiError(413, f"the request is {request.content_length} bytes; scripts are limited to "
                            f"{settings.max_script_chars} characters")
    if not request.is_json:   # a cross-site form can send text/plain or form bodies, never JSON
        raise ApiError(415, "send the job as JSON, with Content-Type: application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object with a 'script' and optional 'voices'")
    script = body.get("script")
    if not isinstance(script, str):
        raise ApiError(400, "'script' must be a string of 'Speaker N: text' lines")
    if len(script) > settings.max_script_chars:
        raise ApiError(413, f"the script is {len(script)} characters; the limit is {settings.max_script_chars}")
    try:
        script = clean_text(script)
        segments = segment_script(script, settings.max_segment_chars)
    except ScriptError as exc:
        raise ApiError(400, str(exc)) from None
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31):
        raise ApiError(400, "'seed' must be an integer from 0 to 2147483647")
    generation = _generation_options(body)
    title = _title(body.get("title"), segments)
    key = _idempotency_key()

    epoch = require_primary()
    known = current_session()
    voices = _resolve_voices(body.get("voices", {}), speakers_of(segments), known)
    fingerprint = _request_fingerprint(script, voices, seed, generation)
    job_id = idempotent_job_id(key, fingerprint) if key else new_job_id()
    sid, token = _caller_session(known, idempotent_session_token(key, fingerprint) if key and len(key) >= 16 else None)
    if key:
        replay = _replay(job_id, sid, token)
        if replay is not None:
            return replay
    client = request.remote_addr or "unknown"
    for scope, who, limit in (("client", client, settings.rate_limit_per_client),
                              ("session", sid, settings.rate_limit_per_session)):
        wait = rt.store.hit_rate_limit(scope, who, limit)
        if wait:
            raise ApiError(429, f"too many jobs submitted from this {scope} ({limit} a minute); "
                                f"try again in {wait} s", retry_after=wait)

    estimate_s = round(estimate_seconds(" ".join(seg.text for seg in segments)), 1)
    _check_queue_caps(sid, client, estimate_s)
    created_at = time.time()
    seed = secrets.randbelow(2 ** 31) if seed is None else seed
    segment_dicts = [{**seg.to_dict(), "voice": voices[seg.speaker]} for seg in segments]
    total = rt.engine.estimate_chunks(segment_dicts, settings.chunk_seconds)
    job_request = {
        "id": job_id, "session": sid, "created_at": created_at, "accepted_by": settings.node,
        "fingerprint": fingerprint, "idempotency_key": key,
        "epoch": epoch, "engine": settings.engine, "voices": {str(s): v for s, v in voices.items()},
        "segments": segment_dicts, "seed": seed, "generation": generation, "duration_estimate_s": estimate_s,
        "segments_total": total, "segments_exact": not rt.engine.stateful,
        "script": script, "client": client,   # the queue caps count it again after Redis is rebuilt
        "title": title,
    }
    require_primary()  # fresh read right before the durable write
    try:
        rt.files.create(job_id, job_request)
    except StorageFull:
        raise ApiError(503, "shared storage is full; the job was not accepted", retry_after=30) from None
    except FileExistsError:   # the same key, committed by a concurrent retry of this very submit
        replay = _replay(job_id, sid, token)
        if replay is not None:
            return replay
        raise
    _start_session(token, sid)
    # Durable now. Redis is a cache: if this fails, the worker's reconcile recreates the job.
    try:
        rt.store.add(job_id, sid, total, created_at, seed=seed, duration_estimate_s=estimate_s, client=client,
                     title=title)
        rt.store.count_submitted()
    except redis.RedisError:
        current_app.logger.exception("job %s is on shared storage but not in Redis yet", job_id)
    log.info("job %s: accepted at epoch %d (%d turns, %d speakers, about %.0f s of audio)", job_id, epoch,
             len(segments), len(voices), estimate_s, extra=fields(job=job_id, epoch=epoch, event="accepted"))
    response = jsonify({"id": job_id, "status": "queued"})
    response.status_code = 202
    response.headers["Location"] = f"/api/jobs/{job_id}"
    return response


def _check_queue_caps(sid: str, client: str, estimate_s: float) -> None:
    """429 with a sentence when this job would take the session or the client address past what it may
    have waiting or running at once (jobs, or estimated audio)."""
    settings = _rt().settings
    waiting = _rt().store.waiting(sid, client)
    for key, scope, jobs_cap, audio_cap in (
            ("session", "session", settings.queue_jobs_per_session, settings.queue_audio_s_per_session),
            ("client", "client address", settings.queue_jobs_per_client, settings.queue_audio_s_per_client)):
        jobs, seconds = waiting[key]
        if jobs_cap > 0 and jobs + 1 > jobs_cap:
            raise ApiError(429, f"this {scope} has {jobs} jobs waiting or running, the most it may have "
                                f"({jobs_cap}); submit more when one has finished", retry_after=60)
        if audio_cap > 0 and seconds + estimate_s > audio_cap:
            raise ApiError(429, f"this {scope} has about {seconds / 60:.0f} minutes of audio waiting or running; "
                                f"with this job's {estimate_s / 60:.0f} it would pass the {audio_cap / 60:.0f} "
                                "minutes it may have at once; submit it when earlier jobs have finished",
                           retry_after=60)


IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise ApiError(400, "the Idempotency-Key header must be 1 to 64 letters, digits or '_.:-'")
    return key


def idempotent_job_id(key: str, fingerprint: str) -> str:
    """The job an Idempotency-Key names together with what was asked (script, voices, seed): a retried
    submit finds the same job whether or not it carries the first answer's cookie (that answer may be
    the one that was lost), even when its first attempt was answered 503 while the storage write still
    completed. The same key with another script names another job."""
    return hashlib.sha256(f"idempotency:{key}:{fingerprint}".encode()).hexdigest()[:32]


def idempotent_session_token(key: str, fingerprint: str) -> str:
    """The cookie a keyed submit without a session gets: the same for its retries, so a retry whose
    first answer (and Set-Cookie) was lost lands in the session that owns the job. Keyed with the
    deployment's Redis password: knowing a job's id (it is in URLs and logs) does not give its
    session; knowing the key and the script does, as it gives the job."""
    secret = (urlsplit(_rt().settings.redis_url).password or "").encode()
    digest = hmac.new(secret, f"session:{key}:{fingerprint}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _request_fingerprint(script: str, voices: dict[int, str], seed: int | None, generation: dict) -> str:
    asked = [script, sorted(voices.items()), seed] + ([sorted(generation.items())] if generation else [])
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()


def _generation_options(body: dict) -> dict:
    """The job's own generation settings (GENERATION_OPTIONS), checked: each one the engine takes,
    within its bounds; those not given are the engine's defaults (not stored)."""
    engine = _rt().engine
    out: dict = {}
    for name, (low, high, kind) in GENERATION_OPTIONS.items():
        value = body.get(name)
        if value is None:
            continue
        if name not in engine.generation_options:
            raise ApiError(400, f"the {engine.name} engine has no '{name}' setting")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (kind is int and value != int(value)) or not low <= value <= high:
            what = "an integer" if kind is int else "a number"
            raise ApiError(400, f"'{name}' must be {what} from {low} to {high}")
        out[name] = kind(value)
    return out


def _replay(job_id: str, sid: str, token: str | None) -> Response | None:
    """The response for a submit whose job exists already (same key and script), for the session that
    owns it; None if there is no such job. Another session's job is never handed over (409)."""
    rt = _rt()
    try:
        existing = rt.files.request(job_id)
    except FileNotFoundError:
        return None
    if existing.get("session") != sid:
        raise ApiError(409, "this Idempotency-Key was already used with this same script by another session; "
                            "use a new key for a new job (a retry without the first answer's cookie finds its "
                            "job by a key of 16 characters or more)")
    _start_session(token)   # a retry without the cookie: the session the key names, its cookie again
    job = rt.store.get(job_id)
    if job is None:   # durable, but Redis never heard of it (the first attempt failed after the write)
        rt.store.add(job_id, existing["session"], int(existing.get("segments_total") or len(existing["segments"])),
                     existing["created_at"], seed=int(existing.get("seed", 0) or 0),
                     duration_estimate_s=float(existing.get("duration_estimate_s", 0) or 0),
                     client=str(existing.get("client", "")), title=str(existing.get("title", "")))
        job = rt.store.get(job_id)
    response = jsonify(public_job(job))
    response.status_code = 200
    response.headers["Location"] = f"/api/jobs/{job_id}"
    return response


def _resolve_voices(raw: object, speakers: list[int], sid: str | None) -> dict[int, str]:
    if not isinstance(raw, dict):
        raise ApiError(400, "'voices' must be an object mapping speaker numbers to voice ids")
    rt = _rt()
    engine = rt.engine
    known = engine.voice_ids()
    if engine.takes_reference_clips and any(isinstance(v, str) and VOICE_ID_RE.match(v) for v in raw.values()):
        known |= {v["id"] for v in rt.voices.list(sid)}
    chosen: dict[int, str] = {}
    for key, voice in raw.items():
        if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) <= MAX_SPEAKERS):
            raise ApiError(400, f"'voices' names speaker {key!r}; speakers are numbered 1 to {MAX_SPEAKERS}")
        if not isinstance(voice, str) or voice not in known:
            raise ApiError(400, f"unknown voice {str(voice)[:64]!r} for speaker {key}; "
                                f"GET /api/voices lists the voices")
        chosen[int(key)] = voice
    return {s: chosen.get(s) or engine.default_voice(s) for s in speakers}


# A worker whose last word in Redis is older than this is not counted as taking jobs (it writes every second).
WORKER_SILENT_S = 10.0
NOT_QUEUED = {"queue_position": None, "estimated_start_s": None, "estimated_finish_s": None}


def _queue_estimates(rt: Runtime) -> dict[str, dict]:
    """Per unfinished job: its place in the queue (1 = next), and in how many seconds it starts and ends.
    Each worker that takes jobs is a lane with its measured pace (wall s per audio s over its recent
    chunks; null before one has a pace); a running job holds its worker's lane for the rest of its audio,
    and each queued job, in claim order, goes to the lane that is free first. One job per worker."""
    order, jobs = rt.store.queue_view()
    lanes = _lanes(rt)
    known = [pace for pace in lanes.values() if pace]
    default = sum(known) / len(known) if known else None
    free = {worker: 0.0 for worker in lanes} or {"": 0.0}
    pace_of = {worker: lanes.get(worker) or default for worker in free}
    out = {}
    for job_id, job in jobs.items():
        if job["status"] != "running":
            continue
        left = max(job["estimate_s"] - job["done_s"], 0.0)
        worker = job.get("node") if job.get("node") in free else min(free, key=free.get)
        pace = pace_of[worker]
        free[worker] += left * pace if pace else 0.0
        # past its estimate (the text said less than it takes): no time to promise
        out[job_id] = {**NOT_QUEUED, "estimated_finish_s": round(left * pace, 1) if pace and left > 0 else None}
    position = 0
    for job_id in order:
        job = jobs[job_id]
        if job["status"] != "queued":
            continue
        position += 1
        worker = min(free, key=free.get)
        pace = pace_of[worker]
        start = free[worker]
        free[worker] = start + job["estimate_s"] * (pace or 0.0)
        out[job_id] = {"queue_position": position, "estimated_start_s": round(start, 1) if pace else None,
                       "estimated_finish_s": round(free[worker], 1) if pace else None}
    return out


def _lanes(rt: Runtime) -> dict[str, float | None]:
    """The workers taking jobs now (their last word in Redis is recent) and each one's pace; before any
    worker has spoken, this node's own worker (its heartbeat file)."""
    lanes = {worker: info.get("pace") for worker, info in rt.store.workers(rt.settings.worker_forget_s).items()
             if info.get("takes_jobs") and info["age_s"] < WORKER_SILENT_S}
    if lanes:
        return lanes
    hb, _ = heartbeat.read(heartbeat.heartbeat_path(rt.settings.run_dir, rt.settings.node))
    return {rt.settings.node: (hb or {}).get("pace")}


def _with_queue(jobs: list[dict]) -> list[dict]:
    try:
        estimates = _queue_estimates(_rt()) if any(j.get("status") in ("queued", "running") for j in jobs) else {}
    except redis.RedisError:
        estimates = {}
    return [{**public_job(j), **estimates.get(j.get("id"), NOT_QUEUED)} for j in jobs]


@bp.get("/jobs")
def list_jobs():
    sid = current_session()
    jobs = _rt().store.session_jobs(sid) if sid else []
    return jsonify({"jobs": _with_queue(jobs)})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(_with_queue([_owned_job(job_id)])[0])


@bp.get("/jobs/<job_id>/audio")
def get_audio(job_id: str):
    """The finished audio as WAV, FLAC or Ogg Vorbis: always a finished file on shared storage (the
    compact formats encoded once, by the worker when the job ends or here on the first request), sent
    by nginx (X-Accel-Redirect) so that no app thread waits on a slow reader."""
    fmt = request.args.get("format", "wav")
    if fmt not in DOWNLOADS:
        raise ApiError(400, f"format must be one of {', '.join(DOWNLOADS)}, not {fmt[:16]!r}")
    job = _owned_job(job_id)
    if job.get("status") != "done":
        raise ApiError(404, f"the job is {job.get('status')}; its audio exists once it is done")
    rt = _rt()
    if not rt.storage.exists(rt.files.audio_path(job_id)):
        raise ApiError(404, "the job's audio file is missing from shared storage")
    path = rt.files.download_path(job_id, fmt)
    if not rt.storage.exists(path):   # a job finished before downloads were made when it ended
        lock = _ENCODING.setdefault((job_id, fmt), threading.Lock())
        if not lock.acquire(blocking=False):
            raise ApiError(503, f"the {fmt} file of this job is being prepared; try again in a few seconds",
                           retry_after=5)
        try:
            path = rt.files.encode_download(job_id, fmt)
        finally:
            lock.release()
            _ENCODING.pop((job_id, fmt), None)
    return _send(path, DOWNLOADS[fmt][2], f"tts-{job_id}.{fmt}", attach=request.args.get("download") == "1")


def _send(path, mimetype: str, name: str, attach: bool = False) -> Response:
    """A file on shared storage: handed to nginx when it fronts the request (it says so with
    X-Sendfile-Type, as Rack::Sendfile has it), else sent from here (with ranges)."""
    rt = _rt()
    if request.headers.get("X-Sendfile-Type") == "X-Accel-Redirect":
        relative = path.relative_to(rt.settings.shared_dir).as_posix()
        response = Response(b"", mimetype=mimetype)
        response.headers["X-Accel-Redirect"] = f"{ACCEL_PREFIX}{relative}"
        response.headers["Content-Disposition"] = f'{"attachment" if attach else "inline"}; filename="{name}"'
        return response
    return send_file(path, mimetype=mimetype, as_attachment=attach, download_name=name, conditional=True)


# nginx's internal location for files on shared storage (roles/nginx/templates/tts.conf.j2).
ACCEL_PREFIX = "/_tts_files/"
# (job, format) -> the lock of the one request encoding it in this process: the others are told to
# come back rather than each starting the same encode.
_ENCODING: dict[tuple[str, str], threading.Lock] = {}


@bp.get("/jobs/<job_id>/chunks")
def list_chunks(job_id: str):
    """The chunks committed so far, playable while the job runs."""
    _owned_job(job_id)
    segs = _rt().files.segments(job_id)
    # `name`: the file (its epoch in it): a chunk generated again after a failover has another name
    return jsonify({"chunks": [{"index": i, "url": f"/api/jobs/{job_id}/chunks/{i}", "name": segs[i].name}
                               for i in sorted(segs)]})


@bp.get("/jobs/<job_id>/chunks/<int:index>")
def get_chunk(job_id: str, index: int):
    _owned_job(job_id)
    rt = _rt()
    seg = rt.files.segments(job_id).get(index)
    if seg is None:
        raise ApiError(404, f"chunk {index} is not on shared storage (yet)")
    return _send(rt.files.segment_path(job_id, seg), "audio/wav", f"tts-{job_id}-{index}.wav")


def _purge(job_id: str, job: dict):
    """A finished job out of the session's history: its folder renamed aside in one step (nobody sees it
    from then on; Redis can never be rebuilt with it), its records gone from Redis, the files deleted
    in the background (what is left, the retention run's trash emptying removes)."""
    if job.get("status") not in FINAL:
        raise ApiError(400, f"the job is {job.get('status')}: cancel it first, then delete it")
    require_primary()
    rt = _rt()
    if rt.store.lease_holder(job_id):   # cancelled, but its worker has not stopped yet (next chunk boundary)
        raise ApiError(409, "the job is still stopping; delete it in a few seconds", retry_after=5)
    try:
        trash = forget(rt, job_id)
    except FileNotFoundError:           # deleted meanwhile (a second click, another tab)
        raise ApiError(404, "the job is deleted already") from None
    threading.Thread(target=delete_quietly, args=(rt, trash), name=f"purge-{job_id[:8]}", daemon=True).start()
    log.info("job %s: deleted by its session", job_id, extra=fields(job=job_id, event="deleted"))
    return jsonify({"id": job_id, "deleted": True})


@bp.get("/jobs/<job_id>/request")
def job_request(job_id: str):
    """What was asked (title, script, voices, seed, generation settings): the page's "Run again"."""
    _owned_job(job_id)
    asked = _rt().files.request(job_id)
    return jsonify({key: asked.get(key) for key in ("title", "script", "voices", "seed", "generation")})


@bp.delete("/jobs/<job_id>")
def cancel(job_id: str):
    job = _owned_job(job_id)
    if request.args.get("purge") == "1":
        return _purge(job_id, job)
    if job.get("status") in FINAL:
        raise ApiError(400, f"the job is already {job.get('status')}")
    require_primary()
    rt = _rt()
    rt.files.mark(job_id, "cancelled", node=rt.settings.node)   # durable first: whoever runs it stops
    markers = rt.files.markers(job_id)
    final = next(m for m in FINAL if m in markers)              # a `done` that won the race stands
    rt.store.finish(job_id, final)
    if final != "cancelled":
        raise ApiError(400, f"the job was {final} before it could be cancelled")
    return jsonify(public_job({**job, "status": final})), 202
