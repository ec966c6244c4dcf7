"""The engine interface: a voice list, a plan (the job's segments grouped into parts) and a stream of
chunks per part, each chunk with what resuming after it needs.

One code path for every engine (worker.py): a job is planned into parts; each part is generated as
one stream of chunks; every chunk is committed to shared storage as a segment (`segments/<n>.<epoch>.wav`)
with, for a stateful engine, its checkpoint beside it. espeak: a part is one turn and its one chunk is
the whole turn (nothing to resume inside it). VibeVoice: a part is as much of the dialogue as fits the
model's context, generated as one stream, a chunk every TTS_CHUNK_SECONDS, resumable after any chunk.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


class EngineError(RuntimeError):
    """The engine could not synthesise a segment this time (out of GPU memory, a crashed subprocess,
    no audio): transient. The worker retries the segment once after Engine.recover(), then hands the
    job back; the message is shown on the job."""


class EngineInputError(EngineError):
    """The input itself cannot be synthesised (an unknown voice, text the engine refuses): retrying
    cannot help, so the job fails at once."""


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    engine: str

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "engine": self.engine}


@dataclass(frozen=True)
class Part:
    """Consecutive segments of a job generated as one stream. `speakers`: every (speaker, voice) of
    the job, in order (a dialogue engine puts all of them in every part's prompt)."""
    index: int
    segments: tuple[dict, ...]
    speakers: tuple[tuple[int, str], ...] = ()
    # The job's generation settings (GENERATION_OPTIONS names), sorted (key, value) pairs; an engine
    # uses those it has and its defaults for the rest.
    options: tuple[tuple[str, float], ...] = ()

    @property
    def chars(self) -> int:
        return sum(len(s["text"]) for s in self.segments)


@dataclass
class Chunk:
    """One piece of a part's audio. `checkpoint`: arrays kept with the chunk (what a resume needs from
    every chunk of the part so far); `state`: arrays only the newest chunk's copy of which is needed."""
    samples: np.ndarray
    final: bool
    checkpoint: dict[str, np.ndarray] | None = None
    state: dict[str, np.ndarray] | None = None
    why: str = ""
    meta: dict = field(default_factory=dict)


# Per-job generation settings a request may give, with their bounds: (low, high, type). VibeVoice's
# classifier-free guidance scale and diffusion steps, as the model's demo offers them; the steps are
# bounded at twice the default, what a job may cost the GPU.
GENERATION_OPTIONS = {"cfg_scale": (1.0, 2.0, float), "diffusion_steps": (5, 20, int)}


class Engine(ABC):
    name: str = ""
    sample_rate: int = 0
    # Chunks carry checkpoints: a part can be resumed after any chunk (espeak: no, a part is one chunk).
    stateful: bool = False
    # Voices can be reference clips users upload (POST /api/voices).
    takes_reference_clips: bool = False
    # Which GENERATION_OPTIONS a job may set for this engine.
    generation_options: tuple[str, ...] = ()

    @abstractmethod
    def voices(self) -> list[Voice]:
        """Voices a request may name. Cheap: the app calls it without loading the engine."""

    def default_voice(self, speaker: int) -> str:
        """A distinct voice for speaker 1..4 when the request names none."""
        voices = self.voices()
        return voices[(speaker - 1) % len(voices)].id

    def voice_ids(self) -> set[str]:
        return {v.id for v in self.voices()}

    def load(self) -> None:
        """Heavy initialisation (model weights). Called once by the worker, never by the web app."""
        return None      # an engine with nothing to load

    def recover(self) -> None:
        """Free what a failed synthesis may have left behind (the GPU cache) before a retry."""
        return None      # an engine that keeps nothing between attempts

    @property
    def loaded(self) -> bool:
        return True

    def available(self) -> tuple[bool, str]:
        """Whether this host can run the engine at all (binary present, model folder readable)."""
        return True, "ok"

    def synthesize(self, text: str, voice_id: str) -> np.ndarray:
        """Speak `text` in `voice_id`; returns mono float32 samples in [-1, 1] at self.sample_rate."""
        raise NotImplementedError

    def preview(self, voice_id: str, text: str) -> np.ndarray:
        """A few seconds of the voice for the page's voice picker, made in the web process (it must be
        cheap there: no model to load). Default: the engine speaking `text`."""
        return self.synthesize(text, voice_id)

    # ---- the chunk/checkpoint interface the worker uses ----

    def plan(self, segments: list[dict], clips: dict[str, np.ndarray] | None = None) -> list[Part]:
        """The job's segments grouped into parts, deterministically (every node plans alike); `clips`:
        uploaded reference clips by voice id. Default: one part per segment."""
        speakers = _speakers(segments)
        return [Part(i, (seg,), speakers) for i, seg in enumerate(segments)]

    def estimate_chunks(self, segments: list[dict], chunk_seconds: float) -> int:
        """How many chunks the job will have (exact for one chunk per part). Cheap: no model load."""
        return len(segments)

    def fingerprint(self, part: Part, seed: int, clips: dict[str, bytes] | None = None) -> str:
        """What a checkpoint of this part must have been made with for a resume to continue it."""
        return _digest({"engine": self.name, "segments": [(s["speaker"], s["text"], s["voice"]) for s in part.segments]})

    def stream(self, part: Part, seed: int, clips: dict[str, np.ndarray] | None = None,
               resume: Resume | None = None) -> Iterator[Chunk]:
        """The part's chunks in order (after `resume`'s, if given). Default: one chunk per part,
        synthesised by synthesize()."""
        seg = part.segments[0]
        yield Chunk(self.synthesize(seg["text"], seg["voice"]), final=True)

    SELF_CHECK_TEXT = "This is a short check of the speech engine."

    def self_check(self) -> str | None:
        """Why the engine cannot speak a plain sentence in its default voice now, or None: what tells a
        broken engine (a node fault) from jobs whose own text makes it fail every time."""
        seg = {"index": 0, "speaker": 1, "text": self.SELF_CHECK_TEXT, "voice": self.default_voice(1)}
        try:
            samples = [c.samples for part in self.plan([seg]) for c in self.stream(part, 0)]
        except Exception as exc:   # whatever it raises is the answer
            return f"{type(exc).__name__}: {exc}"
        audio = np.concatenate(samples) if samples else np.zeros(0, np.float32)
        if audio.size == 0 or not np.isfinite(audio).all():
            return "it made no usable audio for a plain sentence"
        return None

    def resume_from(self, checkpoints: list[dict[str, np.ndarray]], state: dict[str, np.ndarray]) -> Resume:
        """A resume point from the part's chunks' checkpoints (in order) and the newest chunk's state."""
        raise EngineError(f"the {self.name} engine has no checkpoints to resume from")


class Resume:
    """Opaque to the worker: built by Engine.resume_from, handed back to Engine.stream."""


def _speakers(segments: list[dict]) -> tuple[tuple[int, str], ...]:
    seen: dict[int, str] = {}
    for seg in segments:
        seen.setdefault(int(seg["speaker"]), seg["voice"])
    return tuple(sorted(seen.items()))


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]
