#!/usr/bin/env python3
"""Benchmark: the VibeVoice dialogue stream (service/tts_service/engines/vibevoice_stream.py).

Random weights in the real 1.5B / 7B shapes on a GPU (no weights can be fetched; compute per token
is the same as with real ones), bf16, 10 diffusion steps, guidance 1.3, a forced number of audio
tokens per run. Prints, per shape:

- ms per audio token and x real time at contexts of 1K, 16K and 60K positions (a prompt of that many
  tokens, then `--tokens` audio tokens: attention cost grows with the context; caches come in
  power-of-two buckets, so a 60K context runs in the 64K bucket);
- time to resume a 40K-position context from a checkpoint (the prefill over prompt + stored
  embeddings, until the first new chunk is out), and the normal time for that chunk;
- the largest difference between a resumed and an uninterrupted waveform (relative to the peak), in
  the model's dtype (bf16 on a GPU: exactness there is a measurement, not an assumption);
- peak GPU memory.

7.5 audio tokens = 1 s of 24 kHz audio. The goal is >= 4x real time for 1.5B on one H100.
Without a GPU it runs the tiny CPU model of the tests (`--shapes tiny`): its milliseconds say
nothing about a GPU (and its audio per token is 40 samples, not 3200, so x real time is not
printed), but resume exactness and the relative cost of a resume are real. Prints; asserts nothing.

    python bench/engine_gpu.py [--shapes 1.5B,7B] [--contexts 1024,16384,61440] [--tokens 75]
    python bench/engine_gpu.py --shapes tiny --contexts 256,2048,8192 --tokens 30   # CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from tts_service.engines.vibevoice_stream import DialogueStream, Resume  # noqa: E402

SHAPES = {
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, head_inter=4608),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, head_inter=10752),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_inter=64),
}
TOKENS_PER_SECOND = 7.5


def build(shape: str, device: str):
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
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
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


def run(stream: DialogueStream, inputs: dict, tokens: int, resume: Resume | None = None):
    return list(stream.run(inputs, seed=1, max_tokens=tokens, forced_tokens=tokens, resume=resume))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=None, help="1.5B,7B on a GPU (default); tiny on the CPU")
    parser.add_argument("--contexts", default=None, help="prompt lengths (default 1024,16384,61440)")
    parser.add_argument("--tokens", type=int, default=75, help="audio tokens per run (75 = 10 s of audio)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resume-context", type=int, default=40960)
    parser.add_argument("--no-compile", action="store_true", help="eager (no CUDA graphs)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = (args.shapes or ("1.5B,7B" if device == "cuda" else "tiny")).split(",")
    contexts = [int(c) for c in (args.contexts or ("1024,16384,61440" if device == "cuda" else "256,2048,8192")).split(",")]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}; {args.tokens} audio tokens per run, {args.steps} diffusion steps, "
          f"{'bf16' if device == 'cuda' else 'float32'}, compile={'off' if args.no_compile else 'on' if device == 'cuda' else 'off'}")
    for shape in shapes:
        cfg, model = build(shape, device)
        chunk = max(1, args.tokens // 3)
        stream = DialogueStream(model, args.steps, 1.3, compile=(device == "cuda" and not args.no_compile),
                                chunk_tokens=chunk)
        real = shape != "tiny"
        print(f"\n{shape}: {'context':>8s} {'ms/token':>9s} {'x real time':>12s} {'peak GiB':>9s}")
        for ctx in contexts:
            inputs = prompt(cfg, ctx, device)
            run(stream, inputs, args.tokens)            # warm-up: compilation / graph capture for the bucket
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            run(stream, inputs, args.tokens)
            sync(device)
            wall = time.perf_counter() - start
            xrt = f"{args.tokens / TOKENS_PER_SECOND / wall:12.2f}" if real else f"{'-':>12s}"
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:9.1f}" if device == "cuda" else f"{'-':>9s}"
            print(f"{'':6s} {ctx:8d} {wall / args.tokens * 1000:9.1f} {xrt} {peak}", flush=True)
        # Exactness: uninterrupted vs resumed after one chunk, in this dtype.
        inputs = prompt(cfg, contexts[0], device)
        full = run(stream, inputs, args.tokens)
        first = full[0]
        resumed = run(stream, inputs, args.tokens, Resume(first.latents, first.semantic, first.state))
        a = np.concatenate([c.audio for c in full])
        b = np.concatenate([first.audio] + [c.audio for c in resumed])
        gap = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
        print(f"{'':6s} resumed vs uninterrupted (context {contexts[0]}, after chunk 1 of {len(full)}): "
              f"largest difference {gap:.2e} of the peak")
        # Resume cost at a long context: the prefill over prompt + stored embeddings (synthetic latents
        # of the right shape: timing only).
        ctx = min(args.resume_context, stream.context - args.tokens - 8)
        k = max(1, ctx // 10)
        inputs = prompt(cfg, ctx - k, device)
        fake = Resume(np.random.default_rng(0).standard_normal((k, first.latents.shape[1])).astype(np.float32) * 0.1,
                      np.random.default_rng(1).standard_normal((k, first.semantic.shape[1])).astype(np.float32) * 0.1,
                      first.state)
        for label, resume in (("fresh start", None), ("resume", fake)):
            sync(device)
            start = time.perf_counter()
            gen = stream.run(prompt(cfg, ctx - k, device) if resume is None else inputs, seed=1,
                             max_tokens=k + chunk + 4, forced_tokens=(k if resume else 0) + chunk, resume=resume)
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
