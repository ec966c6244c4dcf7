"""Engines behind one interface, chosen by TTS_ENGINE."""
from __future__ import annotations

from ..config import Settings
from .base import GENERATION_OPTIONS, Chunk, Engine, EngineError, EngineInputError, Part, Resume, Voice

ENGINES = ("espeak", "vibevoice")


def create_engine(settings: Settings) -> Engine:
    if settings.engine == "espeak":
        from .espeak import EspeakEngine
        return EspeakEngine()
    if settings.engine == "vibevoice":
        from .vibevoice import VibeVoiceEngine
        return VibeVoiceEngine(settings.vibevoice_model_dir,
                               diffusion_steps=settings.vibevoice_diffusion_steps,
                               guidance_scale=settings.vibevoice_guidance_scale,
                               path=settings.vibevoice_path, chunk_seconds=settings.chunk_seconds,
                               dtype=settings.vibevoice_dtype or None)
    raise ValueError(f"TTS_ENGINE={settings.engine!r} is not one of {', '.join(ENGINES)}")


__all__ = ["GENERATION_OPTIONS", "Chunk", "Part", "Resume", "Engine", "EngineError", "EngineInputError", "Voice",
           "create_engine", "ENGINES"]
