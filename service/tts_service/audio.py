"""WAV encoding, durations and the final assembly (streamed: a 90-minute job never sits in memory)."""
from __future__ import annotations

import io
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (FFT: exact for a clip held in memory, as uploads and voice clips are)."""
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or samples.size == 0:
        return samples
    n_out = int(round(samples.size * to_rate / from_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = min(spectrum.size, n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n=n_out) * (n_out / samples.size)).astype(np.float32)


def resample_bounded(samples: np.ndarray, from_rate: int, to_rate: int, block_s: float = 4.0,
                     pad_s: float = 0.5) -> np.ndarray:
    """resample() a block at a time (each with pad_s of context either side, cut away again), so that
    memory stays at a few seconds' worth however long or fast the input: what an upload takes."""
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or samples.size <= (block_s + 2 * pad_s) * from_rate:
        return resample(samples, from_rate, to_rate)
    step_in, step_out = from_rate // gcd(from_rate, to_rate), to_rate // gcd(from_rate, to_rate)
    block = max(1, int(block_s * from_rate) // step_in) * step_in    # whole steps: blocks align exactly
    pad = max(1, int(pad_s * from_rate) // step_in) * step_in
    block_out = block // step_in * step_out
    n_out = int(round(samples.size * to_rate / from_rate))
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, samples.size, block):
        lo, hi = max(0, start - pad), min(samples.size, start + block + pad)
        piece = resample(samples[lo:hi], from_rate, to_rate)
        skip = (start - lo) // step_in * step_out
        at = start // step_in * step_out
        take = min(block_out, n_out - at, piece.size - skip)
        out[at:at + take] = piece[skip:skip + take]
    return out


def wav_info(path_or_bytes: Path | bytes) -> tuple[int, int]:
    """(frames, sample_rate) of a WAV file or WAV bytes."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    info = sf.info(source)
    return info.frames, info.samplerate


def wav_duration(path_or_bytes: Path | bytes) -> float:
    frames, rate = wav_info(path_or_bytes)
    return frames / rate if rate else 0.0


def check_segment(path: Path, sample_rate: int) -> int:
    """Frames of a committed segment if it is whole and usable: a mono PCM-16 WAV at sample_rate whose
    file holds every frame its header announces. ValueError naming the problem otherwise (a truncated
    or damaged file, a rate left by another engine)."""
    try:
        info = sf.info(str(path))
    except RuntimeError as exc:   # libsndfile: "Format not recognised", "unexpected end of file"...
        raise ValueError(f"{path.name} is not a readable WAV: {exc}") from exc
    if info.samplerate != sample_rate:
        raise ValueError(f"{path.name} is {info.samplerate} Hz, expected {sample_rate}")
    if info.channels != 1 or info.subtype != "PCM_16":
        raise ValueError(f"{path.name} is {info.channels} channel(s) {info.subtype}, expected mono PCM_16")
    declared, available = _data_chunk(path)
    if declared > available:
        raise ValueError(f"{path.name} is truncated: its header announces {declared} bytes of audio, "
                         f"the file holds {available}")
    return info.frames


def _data_chunk(path: Path) -> tuple[int, int]:
    """(bytes the RIFF 'data' chunk declares, bytes present after its header). libsndfile quietly
    shortens a truncated file to what is there, so the header is read here."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError(f"{path.name} has no RIFF/WAVE header")
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk = fh.read(8)
            name, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if name == b"data":
                return length, size - offset - 8
            offset += 8 + length + (length & 1)
    raise ValueError(f"{path.name} has no data chunk")


class UnreadablePart(Exception):
    """One part could not be read whole while joining (an I/O error inside its data, a short read): the
    part, not the job, is at fault. Not an OSError, so that Storage.call hands it over as it is."""

    def __init__(self, part: Path, why: str):
        super().__init__(f"{part.name} could not be read: {why}")
        self.part = part


def concat_wavs(parts: list[Path], out_path: Path, sample_rate: int, block: int = 1 << 16) -> int:
    """Write the parts one after another into out_path (PCM 16); returns the frame count. A part that
    does not read whole (fewer frames than its header says, or an error inside it) is UnreadablePart."""
    frames = 0
    with sf.SoundFile(str(out_path), "w", samplerate=sample_rate, channels=1, format="WAV",
                      subtype="PCM_16") as out:
        for part in parts:
            try:
                src = sf.SoundFile(str(part))
            except (OSError, RuntimeError) as exc:   # soundfile's errors are RuntimeErrors
                raise UnreadablePart(part, f"{type(exc).__name__}: {exc}") from exc
            with src:
                if src.samplerate != sample_rate:
                    raise ValueError(f"{part.name} is {src.samplerate} Hz, expected {sample_rate}")
                expected, read, blocks = src.frames, 0, None
                while True:
                    try:   # only reading the part is the part's fault; writing audio.wav is the NAS's
                        blocks = blocks or src.blocks(blocksize=block, dtype="int16", always_2d=False)
                        chunk = next(blocks, None)
                    except (OSError, RuntimeError) as exc:
                        raise UnreadablePart(part, f"{type(exc).__name__}: {exc}") from exc
                    if chunk is None:
                        break
                    out.write(chunk)
                    read += len(chunk)
            if read != expected:
                raise UnreadablePart(part, f"read {read} of the {expected} frames its header announces")
            frames += read
    return frames


# ---- compact downloads ----

# format -> (libsndfile format, subtype, MIME type). Ogg carries Vorbis: libsndfile 1.2 here offers
# Vorbis and Opus, Opus only at 8/12/16/24/48 kHz (espeak speaks at 22.05 kHz) and, at libsndfile's
# default settings, Vorbis made the smaller speech files (73 KB against 278 KB a minute).
DOWNLOADS = {"wav": ("WAV", "PCM_16", "audio/wav"), "flac": ("FLAC", "PCM_16", "audio/flac"),
             "ogg": ("OGG", "VORBIS", "audio/ogg")}


def encode_file(source: Path, target: Path, fmt: str, block: int = 1 << 16) -> None:
    """The WAV at `source` encoded as `fmt` into the file `target` (memory stays flat)."""
    container, subtype, _mime = DOWNLOADS[fmt]
    with sf.SoundFile(str(source)) as src, sf.SoundFile(str(target), "w", samplerate=src.samplerate, channels=1,
                                                        format=container, subtype=subtype) as out:
        for chunk in src.blocks(blocksize=block, dtype="float32" if container == "OGG" else "int16",
                                always_2d=False):
            out.write(chunk)
