"""The engine interface: a voice list and text -> mono float32 samples at `sample_rate`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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


class Engine(ABC):
    name: str = ""
    sample_rate: int = 0

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

    def recover(self) -> None:
        """Free what a failed synthesis may have left behind (the GPU cache) before a retry."""

    @property
    def loaded(self) -> bool:
        return True

    def available(self) -> tuple[bool, str]:
        """Whether this host can run the engine at all (binary present, model folder readable)."""
        return True, "ok"

    @abstractmethod
    def synthesize(self, text: str, voice_id: str) -> np.ndarray:
        """Speak `text` in `voice_id`; returns mono float32 samples in [-1, 1] at self.sample_rate."""
