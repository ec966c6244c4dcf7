"""espeak-ng from Debian: the embedded CPU engine (about 200x faster than real time)."""
from __future__ import annotations

import io
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from .base import Engine, EngineError, EngineInputError, Voice

# id -> (espeak-ng voice, display name). Variants chosen to sound distinct from each other.
_VOICES = {
    "espeak-us-m3": ("en-us+m3", "US English, male (m3)"),
    "espeak-us-f3": ("en-us+f3", "US English, female (f3)"),
    "espeak-us-m7": ("en-us+m7", "US English, male, deep (m7)"),
    "espeak-us-f4": ("en-us+f4", "US English, female, bright (f4)"),
    "espeak-us-m1": ("en-us+m1", "US English, male (m1)"),
    "espeak-us-f2": ("en-us+f2", "US English, female (f2)"),
}


class EspeakEngine(Engine):
    name = "espeak"
    sample_rate = 22050

    def __init__(self, binary: str = "espeak-ng", words_per_minute: int = 165, timeout_s: float = 120.0):
        self.binary = binary
        self.words_per_minute = words_per_minute
        self.timeout_s = timeout_s

    def voices(self) -> list[Voice]:
        return [Voice(vid, name, self.name) for vid, (_, name) in _VOICES.items()]

    def available(self) -> tuple[bool, str]:
        if shutil.which(self.binary) is None:
            return False, f"{self.binary} is not installed"
        return True, "ok"

    def synthesize(self, text: str, voice_id: str) -> np.ndarray:
        if voice_id not in _VOICES:
            raise EngineInputError(f"unknown espeak voice {voice_id!r}")
        espeak_voice = _VOICES[voice_id][0]
        with tempfile.NamedTemporaryFile(suffix=".wav") as out:
            # Text goes through stdin, never the command line; no shell is involved.
            try:
                proc = subprocess.run(
                    [self.binary, "-v", espeak_voice, "-s", str(self.words_per_minute), "-w", out.name, "--stdin"],
                    input=text.encode("utf-8"), capture_output=True, timeout=self.timeout_s, check=False,
                )
            except subprocess.TimeoutExpired:
                raise EngineError(f"espeak-ng did not finish within {self.timeout_s:g} s") from None
            if proc.returncode != 0:
                raise EngineError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
            data, rate = sf.read(io.BytesIO(open(out.name, "rb").read()), dtype="float32", always_2d=False)
        if rate != self.sample_rate:
            raise EngineError(f"espeak-ng produced {rate} Hz, expected {self.sample_rate}")
        if data.ndim > 1:
            data = data.mean(axis=1)
        return np.ascontiguousarray(data, dtype=np.float32)
