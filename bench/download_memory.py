#!/usr/bin/env python3
"""Benchmark: memory and time of the compact downloads (GET /api/jobs/<id>/audio?format=...) for a
90-minute espeak job. Builds the job's audio.wav from real espeak turns repeated to the length
(22.05 kHz mono PCM-16, ~238 MB), then, per format, runs the service's encoder (audio.encode_file: the
download encoded once into a file beside audio.wav, which nginx then sends) in a fresh process, and
prints the process's peak RSS before and after, the time to encode and the size. Prints; asserts
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
from pathlib import Path
from tts_service.audio import encode_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
target = Path({wav!r}).with_suffix("." + {fmt!r})
encode_file(Path({wav!r}), target, {fmt!r})
print(json.dumps({{"rss_before_mb": before / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "total_s": time.perf_counter() - start, "bytes": target.stat().st_size}}))
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
        print(f"{'format':6s} {'peak RSS MB':>12s} {'(at start)':>11s} {'encode s':>9s} {'MB':>7s}")
        for fmt in ("flac", "ogg"):
            out = subprocess.run([sys.executable, "-c", CHILD.format(service=str(ROOT / "service"), wav=str(wav), fmt=fmt)],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{fmt:6s} {m['rss_peak_mb']:12.0f} {m['rss_before_mb']:11.0f} {m['total_s']:9.1f} "
                  f"{m['bytes'] / 1e6:7.1f}", flush=True)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
