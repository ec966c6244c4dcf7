"""The vibevoice engine on a tiny random VibeVoice model saved to disk and loaded through
from_pretrained (the same code path as a real checkpoint). CPU only; no weights are downloaded."""
import io

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.harness import Node, cluster_cli, node_env, wait_for
from tests.vibevoice_tiny import SAMPLES_PER_TOKEN, build_tiny_vibevoice
from tts_service.engines import EngineError
from tts_service.engines.vibevoice import VibeVoiceEngine

TOKENS = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_vibevoice(tmp_path_factory.mktemp("tiny-vibevoice"))


@pytest.fixture(scope="module")
def engine(model_dir):
    e = VibeVoiceEngine(str(model_dir), force_audio_tokens=TOKENS)
    e.load()
    return e


def test_voices_are_the_reference_clips_and_need_no_model_load(model_dir):
    e = VibeVoiceEngine(str(model_dir))
    assert [v.id for v in e.voices()] == ["vv-speaker1", "vv-speaker2"]
    assert not e.loaded
    assert VibeVoiceEngine("").available() == (False, "TTS_VIBEVOICE_MODEL_DIR is not set")


def test_generates_a_finite_24khz_waveform_of_the_forced_length(engine):
    samples = engine.synthesize("Hello world, this is a test.", "vv-speaker1")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == TOKENS * SAMPLES_PER_TOKEN
    assert np.isfinite(samples).all()
    assert engine.sample_rate == 24000


def test_same_seed_same_audio(engine):
    a = engine.synthesize("Same text twice.", "vv-speaker2", seed=7)
    b = engine.synthesize("Same text twice.", "vv-speaker2", seed=7)
    assert np.array_equal(a, b)


def test_the_speakers_voice_clip_is_part_of_the_prompt(engine):
    inputs = engine.build_inputs("Hi.", "vv-speaker1")
    audio_tokens = int((inputs["input_ids"] == engine.model.config.audio_token_id).sum())
    clip_tokens = -(-len(engine._clips["vv-speaker1"]) // SAMPLES_PER_TOKEN)
    assert audio_tokens == clip_tokens
    assert inputs["input_values"].shape[-1] >= len(engine._clips["vv-speaker1"])


@pytest.fixture(scope="module")
def fast_engine(model_dir):
    e = VibeVoiceEngine(str(model_dir), force_audio_tokens=TOKENS, path="fast")
    e.load()
    assert e.fast is not None
    return e


# The optimised path must give the reference's waveform: same seed, same forced token schedule.
# Tolerance: 1e-4 of the reference's peak (float32 on the CPU; measured: equal to the last bit
# eager, 2.4e-7 compiled). A different seed differs by more than 10 % of the peak, so this can fail.
TOLERANCE = 1e-4


def relative_gap(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("voice", ["vv-speaker1", "vv-speaker2"])
def test_the_optimised_path_gives_the_reference_waveform(engine, fast_engine, voice):
    text = "Hello world, this is a test of both paths."
    reference = engine.synthesize(text, voice, seed=11)
    optimised = fast_engine.synthesize(text, voice, seed=11)
    assert optimised.shape == reference.shape == (TOKENS * SAMPLES_PER_TOKEN,)
    assert relative_gap(reference, optimised) <= TOLERANCE
    assert relative_gap(reference, fast_engine.synthesize(text, voice, seed=12)) > 0.1


def test_the_compiled_optimised_path_gives_the_reference_waveform(engine, model_dir):
    """torch.compile around the language-model steps and the diffusion head (CUDA graphs on a
    GPU; inductor on this CPU): the same waveform, also on the second call (no stale state)."""
    compiled = VibeVoiceEngine(str(model_dir), force_audio_tokens=TOKENS, path="fast", compile=True)
    compiled.load()
    text = "Compiled once, then run twice."
    reference = engine.synthesize(text, "vv-speaker1", seed=5)
    assert relative_gap(reference, compiled.synthesize(text, "vv-speaker1", seed=5)) <= TOLERANCE
    assert relative_gap(reference, compiled.synthesize(text, "vv-speaker1", seed=5)) <= TOLERANCE


def test_an_unknown_generation_path_is_refused(model_dir):
    with pytest.raises(EngineError, match="auto, fast or reference"):
        VibeVoiceEngine(str(model_dir), path="turbo")


def test_unknown_voice_is_an_engine_error(engine):
    with pytest.raises(EngineError, match="unknown VibeVoice voice"):
        engine.synthesize("Hi.", "espeak-us-m3")


def test_job_through_the_worker_with_the_vibevoice_engine(model_dir, shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    env = node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE="vibevoice",
                   TTS_VIBEVOICE_MODEL_DIR=model_dir, TTS_VIBEVOICE_FORCE_AUDIO_TOKENS=TOKENS)
    node = Node("tts-a", env, tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 90, interval=0.5, what="vibevoice node ready")
        s = requests.Session()
        voices = [v["id"] for v in s.get(f"{node.url}/api/voices").json()["voices"]]
        assert voices == ["vv-speaker1", "vv-speaker2"]
        res = s.post(f"{node.url}/api/jobs", json={
            "script": "Speaker 1: Hello there.\nSpeaker 2: Hi, how are you?\nSpeaker 1: Fine, thanks.",
            "voices": {"1": "vv-speaker1", "2": "vv-speaker2"}})
        assert res.status_code == 202, res.text
        job_id = res.json()["id"]
        job = wait_for(lambda: (j := s.get(f"{node.url}/api/jobs/{job_id}").json())["status"] in ("done", "failed")
                       and j, 120, interval=0.2, what="job finished")
        assert job["status"] == "done", job
        data, rate = sf.read(io.BytesIO(s.get(f"{node.url}/api/jobs/{job_id}/audio").content))
        assert rate == 24000 and len(data) == 3 * TOKENS * SAMPLES_PER_TOKEN
    finally:
        node.stop()
