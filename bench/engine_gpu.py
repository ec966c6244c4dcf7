#!/usr/bin/env python3
"""Benchmark: VibeVoice generation on one GPU, reference path (transformers' generate()) against the
optimised path (service/tts_service/engines/vibevoice_fast.py), in the same run.

Random weights in the real 1.5B and 7B shapes (no weights can be fetched; compute per token is the
same as with real ones), bf16, 10 diffusion steps, guidance 1.3, a forced number of audio tokens so
that every run makes the same amount of audio (7.5 audio tokens = 1 s of 24 kHz audio). Prints, per
shape and path: ms per audio token, x real time, GPU busy % (kernel time / wall time, from
torch.profiler over one run; kernels replayed inside CUDA graphs may be under-counted by the
profiler, so read it beside ms/token), peak GPU memory. cuDNN's attention backend is measured on and
off (the issue measured it slower). The goal for the optimised path is >= 4x real
time for 1.5B at 10 steps on an H100. Prints numbers; asserts nothing. CI has no GPU: run it on a
GPU machine:

    python bench/engine_gpu.py [--shapes 1.5B,7B] [--tokens 75] [--steps 10] [--no-compile]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from tts_service.engines.vibevoice_fast import FastVibeVoice  # noqa: E402

SHAPES = {
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, head_inter=4608),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, head_inter=10752),
}
TOKENS_PER_SECOND = 7.5
PROMPT_LEN = 200


def build(shape: str):
    from transformers import VibeVoiceConfig, VibeVoiceForConditionalGeneration
    s = dict(SHAPES[shape])
    head_inter = s.pop("head_inter")
    cfg = VibeVoiceConfig(text_config=dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=65536,
                                           tie_word_embeddings=True, **s),
                          diffusion_head_config=dict(hidden_size=s["hidden_size"], intermediate_size=head_inter,
                                                     num_hidden_layers=4))
    with torch.device("cuda"):
        model = VibeVoiceForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    return cfg, model


def prompt(cfg) -> dict:
    ids = torch.randint(100, 1000, (1, PROMPT_LEN), device="cuda")
    ids[0, -1] = cfg.audio_bos_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def reference_run(model, cfg, tokens: int, steps: int):
    from transformers import LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        def __init__(self):
            self.schedule = [cfg.audio_token_id] * tokens + [cfg.audio_eos_token_id, cfg.eos_token_id]

        def __call__(self, ids, scores):
            out = torch.full_like(scores, float("-inf"))
            out[:, self.schedule[min(ids.shape[1] - PROMPT_LEN, len(self.schedule) - 1)]] = 0
            return out

    inputs = prompt(cfg)

    def go():
        return model.generate(**inputs, num_diffusion_steps=steps, guidance_scale=1.3, max_new_tokens=tokens + 4,
                              logits_processor=LogitsProcessorList([Force()]))[0]
    return go


def fast_run(fast: FastVibeVoice, cfg, tokens: int):
    inputs = prompt(cfg)
    return lambda: fast.generate(inputs, tokens, forced_audio_tokens=tokens)


def measure(go, tokens: int) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.inference_mode():
        audio = go()
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    audio_s = audio.shape[-1] / 24000
    return {"ms_per_token": wall / tokens * 1000, "x_real_time": audio_s / wall,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "wall_s": wall}


def busy_percent(go) -> float:
    """Kernel time over wall time for one (short) run, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.inference_mode():
        go()
        torch.cuda.synchronize()
    wall_us = (time.perf_counter() - start) * 1e6
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    return 100.0 * kernel_us / wall_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1.5B,7B")
    parser.add_argument("--tokens", type=int, default=75, help="audio tokens per run (75 = 10 s of audio)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="optimised path without CUDA graphs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark runs on a GPU machine (CI has none)")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; {args.tokens} audio tokens "
          f"({args.tokens / TOKENS_PER_SECOND:.0f} s of audio), {args.steps} diffusion steps, bf16")
    print(f"{'shape':6s} {'path':40s} {'ms/token':>9s} {'x real time':>12s} {'GPU busy %':>11s} {'peak GiB':>9s}")
    for shape in args.shapes.split(","):
        cfg, model = build(shape)
        runs = [("reference generate()", reference_run(model, cfg, args.tokens, args.steps))]
        for cudnn in (True, False):
            fast = FastVibeVoice(model, args.steps, 1.3, compile=not args.no_compile, cudnn_attention=cudnn)
            label = (f"optimised{' (eager)' if args.no_compile else ''}, "
                     f"cuDNN attention {'on' if cudnn else 'off'}")
            runs.append((label, fast_run(fast, cfg, args.tokens), cudnn))
        runs[0] = (*runs[0], True)
        for label, go, cudnn in runs:
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            go()   # warm-up: compilation and CUDA-graph capture happen here
            m = measure(go, args.tokens)
            busy = busy_percent(go)
            print(f"{shape:6s} {label:40s} {m['ms_per_token']:9.1f} {m['x_real_time']:12.2f} {busy:11.0f} "
                  f"{m['peak_gib']:9.1f}", flush=True)
        torch.backends.cuda.enable_cudnn_sdp(True)
        del model, runs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
