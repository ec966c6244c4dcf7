"""Reference clips users upload (POST /api/voices), for engines that take one (VibeVoice).

    voices/<session>/<voice id>.flac   the clip, 24 kHz mono 16-bit FLAC (resampled and mixed down here;
                                       clips stored before that are .wav, still read)
    voices/<session>/<voice id>.json   {"id", "name", "engine", "seconds", "sha256", "created_at"}

A clip is 3 to 60 seconds of WAV, FLAC or OGG; anything else is a ClipError naming the problem (the
API answers 400 with it). Ids are `up-` + 16 hex digits; the session id is a sha256 hex digest: no
request value becomes part of a path unchecked. Clips live on shared storage, so a job that names one
runs on either node.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from . import audio
from .storage import Storage

VOICE_ID_RE = re.compile(r"^up-[0-9a-f]{16}$")
SESSION_RE = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("WAV", "FLAC", "OGG")
MIN_SECONDS = 3.0
MAX_SECONDS = 60.0
SAMPLE_RATE = 24000
# Refused before decoding: a small compressed file must not decode into gigabytes in the web process.
MAX_CHANNELS = 2
MAX_RATE = 192000
MAX_CLIPS_PER_SESSION = 50


class ClipError(ValueError):
    """The upload is not a usable reference clip; the message says why."""


def decode_clip(data: bytes) -> np.ndarray:
    """An uploaded file -> 24 kHz mono float32 samples, or ClipError."""
    if not data:
        raise ClipError("the clip is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except RuntimeError:
        raise ClipError("the clip is not audio this service reads: send WAV, FLAC or OGG") from None
    if info.format not in FORMATS:
        raise ClipError(f"the clip is {info.format}; send WAV, FLAC or OGG")
    if info.channels > MAX_CHANNELS or not 8000 <= info.samplerate <= MAX_RATE:
        raise ClipError(f"the clip has {info.channels} channels at {info.samplerate} Hz; send mono or stereo "
                        f"at 8 to {MAX_RATE // 1000} kHz")
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds < MIN_SECONDS or seconds > MAX_SECONDS:
        raise ClipError(f"the clip is {seconds:.1f} s long; a reference clip is {MIN_SECONDS:g} to "
                        f"{MAX_SECONDS:g} seconds")
    # Decoded a block at a time into one mono array the header sized (a header that lied about its
    # length can only make it shorter), then resampled a block at a time: memory stays near one mono
    # copy of the clip, never every channel of it in float64.
    mono = np.zeros(info.frames, dtype=np.float32)
    filled = 0
    try:
        for block in sf.blocks(io.BytesIO(data), blocksize=65536, dtype="float32", always_2d=True):
            take = min(len(block), info.frames - filled)
            mono[filled:filled + take] = block[:take].mean(axis=1)
            filled += take
            if filled >= info.frames:
                break
    except RuntimeError as exc:
        raise ClipError(f"the clip cannot be decoded: {exc}") from None
    mono = mono[:filled]
    if filled < MIN_SECONDS * info.samplerate:
        raise ClipError(f"the clip decodes to {filled / info.samplerate:.1f} s; a reference clip is "
                        f"{MIN_SECONDS:g} to {MAX_SECONDS:g} seconds")
    if not np.isfinite(mono).all() or not max(float(mono.max()), -float(mono.min())) > 1e-4:
        raise ClipError("the clip is silent")
    return audio.resample_bounded(mono, info.samplerate, SAMPLE_RATE)


class VoiceClips:
    def __init__(self, storage: Storage, root: Path):
        self.storage = storage
        self.root = Path(root)

    def _folder(self, sid: str) -> Path:
        if not SESSION_RE.match(sid or ""):
            raise ValueError("not a session id")
        return self.root / sid

    def save(self, sid: str, name: str, samples: np.ndarray, engine: str) -> dict:
        """Stored as FLAC (lossless: the clip the model hears is the PCM-16 a WAV would hold)."""
        folder = self._folder(sid)
        self.storage.makedirs(folder)
        voice_id = f"up-{secrets.token_hex(8)}"
        buf = io.BytesIO()
        sf.write(buf, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        flac = buf.getvalue()
        info = {"id": voice_id, "name": name, "engine": engine, "seconds": round(len(samples) / SAMPLE_RATE, 3),
                "sha256": hashlib.sha256(flac).hexdigest(), "created_at": time.time(), "format": "flac"}
        self.storage.commit_new(folder / f"{voice_id}.flac", flac)
        self.storage.commit_new(folder / f"{voice_id}.json", json.dumps(info).encode())   # listed once whole
        return info

    def sessions(self) -> list[str]:
        """The sessions that have uploaded voices (a rebuilt Redis recreates them)."""
        if not self.storage.exists(self.root):
            return []
        return [name for name in sorted(self.storage.listdir(self.root)) if SESSION_RE.match(name)]

    def list(self, sid: str | None) -> list[dict]:
        if not sid:
            return []
        folder = self._folder(sid)
        found = []
        for name in sorted(self.storage.listdir(folder)):
            if name.endswith(".json") and VOICE_ID_RE.match(name[:-5]):
                try:
                    found.append(self.storage.read_json(folder / name))
                except (ValueError, FileNotFoundError):
                    continue
        return sorted(found, key=lambda v: v.get("created_at", 0))

    def path(self, sid: str, voice_id: str) -> Path:
        """The stored clip (FLAC, or WAV for clips stored before); FileNotFoundError if there is none."""
        if not VOICE_ID_RE.match(voice_id):
            raise FileNotFoundError(voice_id)
        folder = self._folder(sid)
        for suffix in (".flac", ".wav"):
            if self.storage.exists(folder / f"{voice_id}{suffix}"):
                return folder / f"{voice_id}{suffix}"
        raise FileNotFoundError(voice_id)

    def delete(self, sid: str, voice_id: str) -> None:
        """The clip's record first (unlisted at once), then its audio."""
        folder = self._folder(sid)
        audio = self.path(sid, voice_id)
        self.storage.call(_remove, folder / f"{voice_id}.json")
        self.storage.call(_remove, audio)

    def load(self, sid: str, voice_id: str) -> np.ndarray:
        """The clip's samples (24 kHz mono); FileNotFoundError if the session has no such clip."""
        if not VOICE_ID_RE.match(voice_id):
            raise FileNotFoundError(voice_id)
        folder = self._folder(sid)
        try:
            data = self.storage.read_bytes(folder / f"{voice_id}.flac")
        except FileNotFoundError:   # stored before clips were kept compressed
            data = self.storage.read_bytes(folder / f"{voice_id}.wav")
        samples, _rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        return samples


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
