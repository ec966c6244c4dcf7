"""VibeVoice through transformers (`VibeVoiceForConditionalGeneration` + `VibeVoiceProcessor`).

The model folder (TTS_VIBEVOICE_MODEL_DIR) is an HF-format checkpoint loaded with `from_pretrained`;
nothing is ever downloaded. Voices are the reference clips in `<model dir>/voices/*.wav` (24 kHz
mono; voice id `vv-<file stem>`); without that folder there is one voice with no reference.

One segment (speaker turn) is generated per call, so memory stays flat over a 90-minute script.
Two generation paths (TTS_VIBEVOICE_PATH): the optimised one in vibevoice_fast.py (default on a
GPU) and transformers' own generate() (the reference; default on the CPU). They give the same
waveform for the same seed (tests/integration/test_vibevoice.py).
the prompt is VibeVoice's canonical one with the speaker as "Speaker 0" and its clip as the voice
input. torch/transformers/diffusers are an optional extra (`tts-service[vibevoice]`).
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np

from .base import Engine, EngineError, EngineInputError, Voice

SAMPLE_RATE = 24000
TOKENS_PER_SECOND = 7.5
SYSTEM_PROMPT = (" Transform the text provided by various speakers into speech output, "
                 "utilizing the distinct voice of each respective speaker.\n")


class VibeVoiceEngine(Engine):
    name = "vibevoice"
    sample_rate = SAMPLE_RATE

    def __init__(self, model_dir: str, diffusion_steps: int = 10, guidance_scale: float = 1.3,
                 device: str | None = None, force_audio_tokens: int | None = None,
                 max_seconds_per_char: float = 0.25, path: str = "auto", compile: bool | None = None):
        if path not in ("auto", "fast", "reference"):
            raise EngineError(f"TTS_VIBEVOICE_PATH is auto, fast or reference, not {path!r}")
        self.path = path
        self.compile = compile   # fast path: torch.compile (CUDA graphs); None = on a GPU only
        self.fast = None
        self.model_dir = Path(model_dir) if model_dir else None
        self.diffusion_steps = diffusion_steps
        self.guidance_scale = guidance_scale
        self.device_name = device
        # Testing/benchmark knob: random-weight models never choose audio tokens by themselves.
        env_force = os.environ.get("TTS_VIBEVOICE_FORCE_AUDIO_TOKENS")
        self.force_audio_tokens = force_audio_tokens if force_audio_tokens is not None else (
            int(env_force) if env_force else None)
        self.max_seconds_per_char = max_seconds_per_char
        self.model = None
        self.processor = None
        self.device = None
        self._clips: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    # ---- voices (cheap: no torch import) ----

    def _voice_files(self) -> dict[str, Path]:
        if self.model_dir is None:
            return {}
        folder = self.model_dir / "voices"
        if not folder.is_dir():
            return {}
        return {f"vv-{p.stem}": p for p in sorted(folder.glob("*.wav"))}

    def voices(self) -> list[Voice]:
        files = self._voice_files()
        if not files:
            return [Voice("vv-default", "VibeVoice default voice", self.name)]
        return [Voice(vid, f"VibeVoice: {p.stem}", self.name) for vid, p in files.items()]

    def available(self) -> tuple[bool, str]:
        if self.model_dir is None:
            return False, "TTS_VIBEVOICE_MODEL_DIR is not set"
        if not (self.model_dir / "config.json").is_file():
            return False, f"{self.model_dir} holds no config.json"
        return True, "ok"

    # ---- loading ----

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        ok, why = self.available()
        if not ok:
            raise EngineError(why)
        import soundfile as sf
        import torch
        from transformers import VibeVoiceForConditionalGeneration, VibeVoiceProcessor

        device = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.processor = VibeVoiceProcessor.from_pretrained(self.model_dir)
        model = VibeVoiceForConditionalGeneration.from_pretrained(self.model_dir, dtype=dtype)
        self.model = model.to(device).eval()
        self.device = device
        if self.path == "fast" or (self.path == "auto" and device.startswith("cuda")):
            from .vibevoice_fast import FastVibeVoice
            self.fast = FastVibeVoice(self.model, self.diffusion_steps, self.guidance_scale, compile=self.compile)
        for vid, path in self._voice_files().items():
            data, rate = sf.read(str(path), dtype="float32", always_2d=False)
            if data.ndim > 1:
                data = data.mean(axis=1)
            if rate != SAMPLE_RATE:
                import soxr
                data = soxr.resample(data, rate, SAMPLE_RATE).astype(np.float32)
            self._clips[vid] = data

    # ---- generation ----

    def build_inputs(self, text: str, voice_id: str):
        """The processor's tensors for one segment, prompt in VibeVoice's canonical layout."""
        if voice_id not in {v.id for v in self.voices()}:
            raise EngineInputError(f"unknown VibeVoice voice {voice_id!r}")
        p = self.processor
        clip = self._clips.get(voice_id)
        prompt = SYSTEM_PROMPT
        if clip is not None:
            prompt += f" Voice input:\n Speaker 0:{p.audio_bos_token}{p.audio_token}{p.audio_eos_token}\n"
        prompt += f" Text input:\n Speaker 0: {text.strip()}\n Speech output:\n{p.audio_bos_token}"
        kwargs = {"audio": [clip], "sampling_rate": SAMPLE_RATE} if clip is not None else {}
        return self.processor(text=[prompt], return_tensors="pt", **kwargs).to(self.device)

    def max_new_tokens(self, text: str) -> int:
        if self.force_audio_tokens is not None:
            return self.force_audio_tokens + 4
        return int(math.ceil(len(text) * self.max_seconds_per_char * TOKENS_PER_SECOND)) + 16

    def logits_processors(self, prompt_len: int):
        from transformers import LogitsProcessorList
        if self.force_audio_tokens is None:
            return LogitsProcessorList()
        cfg = self.model.config
        return LogitsProcessorList([ForceAudioTokens(prompt_len, self.force_audio_tokens, cfg.audio_token_id,
                                                     cfg.audio_eos_token_id, cfg.eos_token_id)])

    def recover(self) -> None:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def synthesize(self, text: str, voice_id: str, seed: int | None = 0) -> np.ndarray:
        if self.model is None:
            raise EngineError("the VibeVoice model is not loaded")
        import torch
        with self._lock, torch.inference_mode():
            inputs = self.build_inputs(text, voice_id)
            if seed is not None:
                torch.manual_seed(seed)
            try:
                if self.fast is not None:
                    audio = self.fast.generate(inputs, self.max_new_tokens(text),
                                               forced_audio_tokens=self.force_audio_tokens)
                else:
                    audio = self.model.generate(
                        **inputs, num_diffusion_steps=self.diffusion_steps, guidance_scale=self.guidance_scale,
                        max_new_tokens=self.max_new_tokens(text),
                        logits_processor=self.logits_processors(inputs["input_ids"].shape[1]))[0]
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise EngineError(f"the GPU ran out of memory on this segment: {exc}") from exc
        if audio is None:
            raise EngineError("the model produced no audio for this segment")
        samples = audio.detach().float().cpu().numpy().reshape(-1)
        if not np.isfinite(samples).all():
            raise EngineError("the model produced non-finite audio")
        return samples.astype(np.float32)


def _force_class():
    from transformers import LogitsProcessor

    class _Force(LogitsProcessor):
        def __init__(self, prompt_len: int, n: int, audio: int, audio_eos: int, eos: int):
            self.prompt_len = prompt_len
            self.schedule = [audio] * n + [audio_eos, eos]

        def __call__(self, input_ids, scores):
            import torch
            step = min(input_ids.shape[1] - self.prompt_len, len(self.schedule) - 1)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.schedule[step]] = 0
            return forced

    return _Force


def ForceAudioTokens(prompt_len: int, n: int, audio: int, audio_eos: int, eos: int):  # noqa: N802
    """Logits processor: exactly n audio tokens, then end of audio, then end of text."""
    return _force_class()(prompt_len, n, audio, audio_eos, eos)
