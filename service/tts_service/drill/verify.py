"""Check a finished canary where its files are: on a TTS node, with the app's settings (tts.env).

Every segment index 0..total-1 is on shared storage, audio.wav exists, and its duration equals the sum
of the segments it was built from (to a few samples); the job's attempts in Redis minus its segments is
how many segments were generated twice (the one in hand when the primary died, at most)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import audio
from ..config import Settings
from ..jobfiles import JobFiles, check_job_id
from ..jobs import JobStore, connect
from ..storage import Storage

TOLERANCE_S = 0.01


@dataclass
class Verdict:
    job_id: str
    ok: bool
    reason: str
    status: str = ""
    segments_total: int = 0
    segments_found: int = 0
    segments_duration_s: float = 0.0
    audio_duration_s: float = 0.0
    attempts: int = 0
    recomputed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def verify(job_id: str, settings: Settings | None = None) -> Verdict:
    settings = settings or Settings()
    job_id = check_job_id(job_id)
    storage = Storage(settings.shared_dir, timeout=settings.storage_timeout_s)
    files = JobFiles(storage, settings.jobs_dir)
    record = JobStore(connect(settings.redis_url)).get(job_id) or {}
    v = Verdict(job_id=job_id, ok=False, reason="", status=record.get("status", "unknown"))
    v.segments_total = int(record.get("segments_total") or len(files.request(job_id).get("segments", [])))
    v.attempts = int(record.get("attempts") or 0)
    v.recomputed = max(0, v.attempts - v.segments_total)
    segs = files.segments(job_id)
    v.segments_found = len(segs)
    v.segments_duration_s = round(files.segments_duration(job_id, segs), 4)
    missing = [i for i in range(v.segments_total) if i not in segs]
    if v.status != "done":
        v.reason = f"the job is {v.status}, not done"
    elif missing:
        v.reason = f"segments {missing[:10]} are missing on shared storage"
    elif not storage.exists(files.audio_path(job_id)):
        v.reason = "audio.wav is missing"
    else:
        v.audio_duration_s = round(storage.call(audio.wav_duration, files.audio_path(job_id)), 4)
        gap = abs(v.audio_duration_s - v.segments_duration_s)
        if gap > TOLERANCE_S:
            v.reason = (f"audio.wav lasts {v.audio_duration_s:.3f} s but its segments add up to "
                        f"{v.segments_duration_s:.3f} s")
        else:
            v.ok = True
            v.reason = (f"all {v.segments_total} segments present, audio {v.audio_duration_s:.2f} s = their sum, "
                        f"{v.recomputed} generated twice")
    return v
