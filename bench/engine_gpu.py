#!/usr/bin/env python3
"""Benchmark: the VibeVoice dialogue stream (service/tts_service/engines/vibevoice_stream.py).

Random weights in the real 1.5B / 7B shapes on a GPU (no weights can be fetched; compute per token
is the same as with real ones), bf16, 10 diffusion steps, guidance 1.3. Random weights never choose
audio tokens by themselves, so lm_head gets a bias toward the audio token: the stream runs its
**natural path** (lm_head on every step, the argmax read back to the host: one sync per token), as a
real checkpoint makes it run. Prints, per shape:

- at contexts of 1K, 16K and 60K positions (a prompt of that many tokens): the prompt's **prefill**
  time apart, then the **decode**: ms per audio token and x real time over `--tokens` audio tokens,
  and peak GPU memory (caches come in power-of-two buckets: a 60K context runs in the 64K bucket);
- time to resume at a 40K-position context from a checkpoint (prefill + one batched forward per
  committed chunk, until the first new chunk is out), beside a fresh start's;
- the largest difference between a resumed and an uninterrupted waveform (relative to the peak), in
  the model's dtype: 0 when resume is exact (bf16 on a GPU: a measurement, not an assumption).

7.5 audio tokens = 1 s of 24 kHz audio. Goal: 1.5B >= 4x real time at 16K context on one H100/H200.
Without a GPU it runs the tiny CPU model of the tests (`--shapes tiny`): its milliseconds say
nothing about a GPU (and its audio per token is 40 samples, not 3200, so x real time is not
printed), but exactness and the relative cost of a resume are real. Prints; asserts nothing.
The wheels a bare GPU machine needs besides torch: `make gpu-wheels` (into .gpu-wheels/, to carry).

    python bench/engine_gpu.py [--shapes 1.5B,7B] [--contexts 1024,16384,61440] [--tokens 75]
    python bench/engine_gpu.py --shapes tiny --contexts 256,2048,8192 --tokens 30   # CPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS, as the engine sets it
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from tts_service.engines.vibevoice_stream import DialogueStream, Resume

SHAPES = {
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, head_inter=4608),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, head_inter=10752),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_inter=64),
}
TOKENS_PER_SECOND = 7.5


def build(shape: str, device: str, dtype: torch.dtype):
    from transformers import VibeVoiceConfig, VibeVoiceForConditionalGeneration
    s = dict(SHAPES[shape])
    head_inter = s.pop("head_inter")
    extra = {}
    if shape == "tiny":
        acoustic = dict(hidden_size=8, num_filters=4, downsampling_ratios=[2, 4, 5], depths=[1, 1, 1, 1], kernel_size=3)
        extra = dict(audio_config=acoustic, semantic_model_config={**acoustic, "hidden_size": 16})
    cfg = VibeVoiceConfig(text_config=dict(model_type="qwen2", vocab_size=151936 if shape != "tiny" else 300,
                                           max_position_embeddings=65536, tie_word_embeddings=True, **s),
                          diffusion_head_config=dict(hidden_size=s["hidden_size"], intermediate_size=head_inter,
                                                     num_hidden_layers=4 if shape != "tiny" else 1), **extra)
    if shape == "tiny":
        cfg.audio_bos_token_id, cfg.audio_eos_token_id, cfg.audio_token_id, cfg.eos_token_id = 297, 298, 299, 296
    torch.manual_seed(0)
    with torch.device(device):
        model = VibeVoiceForConditionalGeneration(cfg).to(dtype).eval()
    return cfg, model


def prompt(cfg, length: int, device: str) -> dict:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(10, 250, (1, length), generator=g).to(device)
    ids[0, -1] = cfg.audio_bos_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def speak(model, cfg) -> None:
    """lm_head biased toward the audio token: the natural path's work (lm_head, argmax, sync) on random
    weights that would otherwise never choose to speak."""
    bias = torch.zeros(model.lm_head.out_features, dtype=model.lm_head.weight.dtype,
                       device=model.lm_head.weight.device)
    bias[cfg.audio_token_id] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)


def run(stream: DialogueStream, inputs: dict, tokens: int, resume: Resume | None = None):
    return list(stream.run(inputs, seed=1, max_tokens=tokens, resume=resume))


def timed(stream: DialogueStream, inputs: dict, tokens: int, device: str) -> tuple[float, float]:
    """(prefill seconds, decode seconds for `tokens` audio tokens): the prefill timed by a run of one token."""
    sync(device)
    start = time.perf_counter()
    run(stream, inputs, 1)
    sync(device)
    one = time.perf_counter() - start
    start = time.perf_counter()
    run(stream, inputs, tokens + 1)
    sync(device)
    whole = time.perf_counter() - start
    per_token = (whole - one) / tokens
    return one - per_token, whole - one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=None, help="1.5B,7B on a GPU (default); tiny on the CPU")
    parser.add_argument("--contexts", default=None, help="prompt lengths (default 1024,16384,61440)")
    parser.add_argument("--tokens", type=int, default=75, help="audio tokens per run (75 = 10 s of audio)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resume-context", type=int, default=40960)
    parser.add_argument("--no-compile", action="store_true", help="eager (no CUDA graphs)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on a GPU) or float32 (default on the CPU)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = (args.shapes or ("1.5B,7B" if device == "cuda" else "tiny")).split(",")
    contexts = [int(c) for c in (args.contexts or ("1024,16384,61440" if device == "cuda" else "256,2048,8192")).split(",")]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    torch.use_deterministic_algorithms(True, warn_only=True)     # as the engine runs
    print(f"torch {torch.__version__}, {name}; {args.tokens} audio tokens per run, {args.steps} diffusion steps, "
          f"{str(dtype).replace('torch.', '')}, compile={'off' if args.no_compile else 'on' if device == 'cuda' else 'off'}")
    for shape in shapes:
        cfg, model = build(shape, device, dtype)
        speak(model, cfg)
        chunk = max(1, args.tokens // 3)
        stream = DialogueStream(model, args.steps, 1.3, compile=(device == "cuda" and not args.no_compile),
                                chunk_tokens=chunk)
        real = shape != "tiny"
        # What the engine's load() does before the node says ready: compile every cache bucket. The
        # first run at each context below then shows whether a job's first chunk still pays for it.
        sync(device)
        start = time.perf_counter()
        warmed = stream.warm_up()
        sync(device)
        print(f"\n{shape}: warm-up (compiled for cache sizes {warmed or 'none: eager'}) "
              f"{time.perf_counter() - start:.1f} s")
        print(f"{'':6s} {'context':>8s} {'prefill s':>10s} {'ms/token':>9s} {'x real time':>12s} {'peak GiB':>9s} "
              f"{'1st run s':>10s} {'2nd run s':>10s}")
        for ctx in contexts:
            inputs = prompt(cfg, ctx, device)
            sync(device)
            start = time.perf_counter()
            run(stream, inputs, args.tokens)            # the first run in this bucket: compiles nothing now
            sync(device)
            first = time.perf_counter() - start
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            prefill, decode = timed(stream, inputs, args.tokens, device)
            xrt = f"{args.tokens / TOKENS_PER_SECOND / decode:12.2f}" if real else f"{'-':>12s}"
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:9.1f}" if device == "cuda" else f"{'-':>9s}"
            print(f"{'':6s} {ctx:8d} {prefill:10.3f} {decode / args.tokens * 1000:9.1f} {xrt} {peak} "
                  f"{first:10.2f} {prefill + decode:10.2f}", flush=True)
        # Exactness: uninterrupted vs resumed after each chunk, in this dtype.
        inputs = prompt(cfg, contexts[0], device)
        full = run(stream, inputs, args.tokens)
        a = np.concatenate([c.audio for c in full])
        gaps = []
        for k in range(1, len(full)):
            done = full[:k]
            resumed = run(stream, inputs, args.tokens, Resume(np.concatenate([c.latents for c in done]),
                                                              np.concatenate([c.semantic for c in done]),
                                                              done[-1].state,
                                                              np.concatenate([c.token_ids for c in done])))
            b = np.concatenate([c.audio for c in done] + [c.audio for c in resumed])
            gaps.append(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
        first = full[0]
        print(f"{'':6s} resumed vs uninterrupted (context {contexts[0]}, after each of chunks 1-{len(full) - 1}): "
              f"largest difference {max(gaps):.2e} of the peak")
        # Resume cost at a long context: the prefill over prompt + stored embeddings (synthetic latents
        # of the right shape: timing only).
        ctx = min(args.resume_context, stream.context - args.tokens - 8)
        k = max(chunk, ctx // 10 // chunk * chunk)       # a whole number of chunks
        inputs = prompt(cfg, ctx - k, device)
        fake = Resume(np.random.default_rng(0).standard_normal((k, first.latents.shape[1])).astype(np.float32) * 0.1,
                      np.random.default_rng(1).standard_normal((k, first.semantic.shape[1])).astype(np.float32) * 0.1,
                      first.state)
        for label, resume in (("fresh start", None), ("resume", fake)):
            sync(device)
            start = time.perf_counter()
            gen = stream.run(prompt(cfg, ctx - k, device) if resume is None else inputs, seed=1,
                             max_tokens=(k if resume else 0) + chunk, resume=resume)
            next(gen)
            sync(device)
            print(f"{'':6s} {label:11s} at context {ctx}: first chunk ({chunk} tokens) after "
                  f"{time.perf_counter() - start:.2f} s", flush=True)
            gen.close()
        del model, stream
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
