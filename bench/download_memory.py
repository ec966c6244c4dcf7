#!/usr/bin/env python3
"""Benchmark: memory and time of the compact downloads (GET /api/jobs/<id>/audio?format=...) for a
90-minute espeak job. Builds the job's audio.wav from real espeak turns repeated to the length
(22.05 kHz mono PCM-16, ~238 MB), then, per format, runs the service's encoder (audio.encode_stream,
what the endpoint streams) in a fresh process that reads every byte, and prints the process's peak
RSS before and after, the time to the first byte and to the last, and the size. Prints; asserts
nothing.

    python bench/download_memory.py [--minutes 90]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {service!r})
from tts_service.audio import encode_stream
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter(); first = None; size = 0
for data in encode_stream(__import__("pathlib").Path({wav!r}), {fmt!r}):
    first = first or time.perf_counter() - start
    size += len(data)
print(json.dumps({{"rss_before_mb": before / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "first_byte_s": first, "total_s": time.perf_counter() - start, "bytes": size}}))
"""


def build_wav(path: Path, minutes: float) -> float:
    from tts_service.engines.espeak import EspeakEngine
    engine = EspeakEngine()
    turns = [engine.synthesize(f"This is turn number {i} of a long conversation, with a second sentence.",
                               voice) for i, voice in enumerate(["espeak-us-m3", "espeak-us-f3", "espeak-us-m7"])]
    block = np.concatenate(turns)
    frames = int(minutes * 60 * engine.sample_rate)
    with sf.SoundFile(str(path), "w", samplerate=engine.sample_rate, channels=1, format="WAV", subtype="PCM_16") as out:
        written = 0
        while written < frames:
            part = block[: frames - written]
            out.write(part)
            written += len(part)
    return written / engine.sample_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=90)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "audio.wav"
        seconds = build_wav(wav, args.minutes)
        print(f"{seconds / 60:.0f}-minute espeak job: audio.wav {wav.stat().st_size / 1e6:.0f} MB, 22.05 kHz mono")
        print(f"{'format':6s} {'peak RSS MB':>12s} {'(at start)':>11s} {'first byte s':>13s} {'total s':>8s} {'MB':>7s}")
        for fmt in ("flac", "ogg"):
            out = subprocess.run([sys.executable, "-c", CHILD.format(service=str(ROOT / "service"), wav=str(wav), fmt=fmt)],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{fmt:6s} {m['rss_peak_mb']:12.0f} {m['rss_before_mb']:11.0f} {m['first_byte_s']:13.2f} "
                  f"{m['total_s']:8.1f} {m['bytes'] / 1e6:7.1f}", flush=True)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
