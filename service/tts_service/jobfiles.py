"""A job's files on shared storage: the truth for what was asked and how far it got.

    jobs/<id>/request.json                 what was accepted (script already split into segments)
    jobs/<id>/leases/<generation>.json     one per grant of the job's lease (JSON: worker, epoch, when),
                                           created exclusively: the generation is the job's fencing
                                           token. A worker writes the job's files only while no newer
                                           grant exists (checked right before each write)
    jobs/<id>/segments/<index>.<epoch>.<generation>.wav  one per chunk (espeak: a turn; VibeVoice:
                                           TTS_CHUNK_SECONDS of the dialogue stream), committed without
                                           overwriting; the writer's epoch and lease generation are in
                                           the name, so a stale writer can never replace a newer chunk
                                           (the newest (epoch, generation) wins; a name without a
                                           generation, written before leases had one, counts as 0).
                                           The commit point of a chunk: its .ckpt/.state exist first
    jobs/<id>/segments/<index>.<epoch>.<generation>.ckpt  stateful engines: the chunk's checkpoint (npz: `meta` =
                                           JSON {part, index in part, final, fingerprint, ...}, plus
                                           the chunk's latents and semantic features), kept until
                                           the job is done
    jobs/<id>/segments/<index>.<epoch>.<generation>.state  the state after the chunk (random state, streaming
                                           caches, meta: part, index, fingerprint); the two newest
                                           chunks' are kept
    jobs/<id>/state/{cancelled,done,failed} durable markers (JSON inside: when, who, why)
    jobs/<id>/failures/<progress>-<ns>-<node>.json  one per failed attempt at the job (what failed),
                                           named by how many segments were whole then; after
                                           TTS_JOB_MAX_ATTEMPTS of them without progress in
                                           between, the job ends `failed`
    jobs/<id>/segments/*.damaged-<hex>     a segment found unreadable, moved aside by the primary
                                           (it is then generated again)
    jobs/<id>/log                          sentences the workers said about the job (resumed from a
                                           checkpoint, a part restarted and why), one per line
    jobs/<id>/audio.wav                    the assembled result, created once

Redis only caches this; on start and promotion the worker rebuilds Redis from these files.
No request value becomes part of a path: ids are checked against JOB_ID_RE first.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import audio
from .cluster import STORAGE_FORMAT as STORAGE_FORMAT  # the layout this module writes, defined beside its record
from .statuses import FINAL as MARKERS
from .storage import Storage, link_new

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SEGMENT_RE = re.compile(r"^(\d{5})\.(\d+)(?:\.(\d+))?\.wav$")
_STATE_RE = re.compile(r"^(\d{5})\.(\d+)(?:\.(\d+))?\.(ckpt|state)$")
_GRANT_RE = re.compile(r"^(\d{6,})\.json$")


class BadJobId(ValueError):
    pass


class Superseded(RuntimeError):
    """The job's lease was granted again since this worker's grant: it must not write the job's files."""


def check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise BadJobId("not a job id")
    return job_id


def new_job_id() -> str:
    return secrets.token_hex(16)


def chunk_stem(index: int, epoch: int, gen: int = 0) -> str:
    """A chunk's files' name without the suffix: index, the writer's epoch and lease generation."""
    return f"{index:05d}.{epoch}.{gen}" if gen else f"{index:05d}.{epoch}"


def segment_name(index: int, epoch: int, gen: int = 0) -> str:
    return f"{chunk_stem(index, epoch, gen)}.wav"


@dataclass(frozen=True)
class SegmentFile:
    index: int
    epoch: int
    name: str
    gen: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        """What decides between two files of one chunk: the newest (epoch, generation) wins."""
        return self.epoch, self.gen

    @property
    def stem(self) -> str:
        return chunk_stem(self.index, self.epoch, self.gen)


class JobFiles:
    def __init__(self, storage: Storage, jobs_dir: Path):
        self.storage = storage
        self.jobs_dir = Path(jobs_dir)

    def dir(self, job_id: str) -> Path:
        return self.jobs_dir / check_job_id(job_id)

    # ---- request ----

    def create(self, job_id: str, request: dict) -> None:
        """Make the job durable: request.json committed (fsynced) before anyone is told 202."""
        base = self.dir(job_id)
        self.storage.makedirs(base / "segments")
        self.storage.makedirs(base / "state")
        if not self.storage.commit_new(base / "request.json", json.dumps(request).encode()):
            raise FileExistsError(f"job {job_id} exists already")

    def request(self, job_id: str) -> dict:
        return self.storage.read_json(self.dir(job_id) / "request.json")

    def list_ids(self) -> list[str]:
        return [name for name in self.storage.listdir(self.jobs_dir) if JOB_ID_RE.match(name)]

    # ---- segments ----

    def segments(self, job_id: str) -> dict[int, SegmentFile]:
        """The winning file per segment index: the one with the newest epoch."""
        best: dict[int, SegmentFile] = {}
        for name in self.storage.listdir(self.dir(job_id) / "segments"):
            match = _SEGMENT_RE.match(name)
            if not match:
                continue
            seg = SegmentFile(int(match.group(1)), int(match.group(2)), name, int(match.group(3) or 0))
            if seg.index not in best or seg.rank > best[seg.index].rank:
                best[seg.index] = seg
        return best

    def commit_segment(self, job_id: str, index: int, epoch: int, wav: bytes, gen: int = 0) -> bool:
        """Commit a segment under the writer's (epoch, generation); False if it exists already."""
        return self.storage.commit_new(self.dir(job_id) / "segments" / segment_name(index, epoch, gen), wav)

    # ---- the job's lease generations (its fencing token) ----

    def grants(self, job_id: str) -> list[int]:
        return sorted(int(m.group(1)) for m in map(_GRANT_RE.match, self.storage.listdir(self.dir(job_id) / "leases"))
                      if m)

    def grant(self, job_id: str, worker: str, epoch: int) -> int | None:
        """The next generation of the job's lease, granted to `worker` (created exclusively: two grants
        racing get two generations); None if the newest grant was made in a newer epoch than the
        caller's (its belief is stale: a newer generation would then carry an older epoch), or if the
        job is gone from storage (purged meanwhile: no folder is made again for it)."""
        if not self.storage.exists(self.dir(job_id) / "request.json"):
            return None
        folder = self.dir(job_id) / "leases"
        self.storage.makedirs(folder)
        while True:
            held = self.grants(job_id)
            newest = held[-1] if held else 0
            if newest:
                try:
                    if int(self.storage.read_json(folder / f"{newest:06d}.json").get("epoch", 0)) > epoch:
                        return None
                except (ValueError, FileNotFoundError):
                    pass   # an unreadable grant still counts: the next generation goes above it
            body = json.dumps({"worker": worker, "epoch": epoch, "at": time.time()}).encode()
            if self.storage.commit_new(folder / f"{newest + 1:06d}.json", body):
                return newest + 1

    def newest_grant(self, job_id: str) -> tuple[int, dict] | None:
        """(generation, {worker, epoch, at}) of the job's newest grant; None if it has none."""
        held = self.grants(job_id)
        if not held:
            return None
        try:
            return held[-1], self.storage.read_json(self.dir(job_id) / "leases" / f"{held[-1]:06d}.json")
        except (ValueError, FileNotFoundError):
            return held[-1], {}

    def check_holder(self, job_id: str, gen: int) -> None:
        """Raise Superseded unless `gen` is the job's newest grant (a fresh read of storage; a job whose
        grants are gone was purged: nobody holds it)."""
        held = self.grants(job_id)
        if not held or held[-1] != gen:
            raise Superseded(f"the job's lease was granted again (generation {held[-1]}, this worker holds {gen})"
                             if held else "the job's grants are gone from storage (purged)")

    # ---- chunk checkpoints (stateful engines) ----

    def commit_chunk(self, job_id: str, index: int, epoch: int, wav: bytes, checkpoint: bytes | None = None,
                     state: bytes | None = None, gen: int = 0) -> bool:
        """State, then checkpoint, then the audio (the commit point). A state or checkpoint of the same
        name without its audio is a dead attempt's of this generation (the lease held it): replaced."""
        base = self.dir(job_id) / "segments"
        stem = chunk_stem(index, epoch, gen)
        for suffix, body in (("state", state), ("ckpt", checkpoint)):
            if body is not None and not self.storage.commit_new(base / f"{stem}.{suffix}", body):
                if self.storage.exists(base / f"{stem}.wav"):
                    return False
                self.storage.write_replace(base / f"{stem}.{suffix}", body)
        return self.commit_segment(job_id, index, epoch, wav, gen)

    def chunk_file(self, job_id: str, seg: SegmentFile, kind: str) -> Path:
        return self.dir(job_id) / "segments" / f"{seg.stem}.{kind}"

    def read_checkpoint(self, job_id: str, seg: SegmentFile) -> tuple[dict, dict]:
        """(meta, arrays) of the chunk's checkpoint, read whole (a damaged array shows here);
        ValueError if it is missing or unreadable."""
        return self.storage.call(_read_npz, self.chunk_file(job_id, seg, "ckpt"))

    def commit_state(self, job_id: str, index: int, epoch: int, state: bytes, gen: int = 0) -> None:
        """The state after chunk `index`, alone (its chunk is on storage already)."""
        path = self.dir(job_id) / "segments" / f"{chunk_stem(index, epoch, gen)}.state"
        if not self.storage.commit_new(path, state):
            self.storage.write_replace(path, state)

    def chunk_state(self, job_id: str, index: int, expect: tuple[int, int, str], follows: str | None = None
                    ) -> dict | None:
        """The state after chunk `index` that belongs to (part, index in part, fingerprint) `expect` and,
        if given, follows the chunk file `follows` (the winning one: a state a dead attempt left beside a
        chunk it never committed is another lineage's), newest (epoch, generation) first; None if there is
        none, or none readable and matching."""
        names = [m for m in map(_STATE_RE.match, self.storage.listdir(self.dir(job_id) / "segments"))
                 if m and m.group(4) == "state" and int(m.group(1)) == index]
        for match in sorted(names, key=lambda m: (-int(m.group(2)), -int(m.group(3) or 0))):
            try:
                meta, arrays = self.storage.call(_read_npz, self.dir(job_id) / "segments" / match.group(0))
            except ValueError:
                continue
            if (meta.get("part"), meta.get("index"), meta.get("fingerprint")) == tuple(expect) \
                    and (follows is None or meta.get("follows", follows) == follows):
                return arrays
        return None

    def drop_chunk_files(self, job_id: str, below: int | None = None, kinds: tuple[str, ...] = ("state",),
                         upto: tuple[int, int] | None = None) -> int:
        """Remove checkpoint files of the given kinds for chunks < below (all if None), of (epoch,
        generation) `upto` or older if given (never a newer holder's); best effort."""
        folder = self.dir(job_id) / "segments"
        doomed = [folder / m.group(0) for m in map(_STATE_RE.match, self.storage.listdir(folder))
                  if m and m.group(4) in kinds and (below is None or int(m.group(1)) < below)
                  and (upto is None or (int(m.group(2)), int(m.group(3) or 0)) <= tuple(upto))]
        return self.storage.call(lambda: sum(_unlink(p) for p in doomed))

    def quarantine_chunk(self, job_id: str, seg: SegmentFile) -> None:
        """A chunk that cannot be used (damaged audio, unreadable or foreign checkpoint): its files
        moved aside together. Only the fenced-checked primary calls this."""
        tag = secrets.token_hex(4)
        for path in (self.segment_path(job_id, seg), self.chunk_file(job_id, seg, "ckpt"),
                     self.chunk_file(job_id, seg, "state")):
            try:
                self.storage.call(os.rename, path, path.with_name(f"{path.name}.damaged-{tag}"))
            except FileNotFoundError:
                pass

    def sound_segments(self, job_id: str, total: int | None, sample_rate: int
                       ) -> tuple[dict[int, SegmentFile], dict[SegmentFile, str], float]:
        """The winning segments 0..total-1 checked whole (audio.check_segment), in one storage call:
        (sound ones, damaged ones -> why, seconds of audio in the sound ones)."""
        segs = {i: s for i, s in self.segments(job_id).items() if total is None or i < total}
        paths = {s: self.segment_path(job_id, s) for s in segs.values()}

        def check() -> tuple[dict[SegmentFile, int], dict[SegmentFile, str]]:
            frames, damaged = {}, {}
            for seg, path in paths.items():
                try:
                    frames[seg] = audio.check_segment(path, sample_rate)
                except ValueError as exc:
                    damaged[seg] = str(exc)
            return frames, damaged

        frames, damaged = self.storage.call(check, timeout=self.storage.timeout + 0.05 * len(paths))
        sound = {i: s for i, s in segs.items() if s in frames}
        return sound, damaged, sum(frames.values()) / sample_rate

    def append_log(self, job_id: str, node: str, sentence: str) -> None:
        line = json.dumps({"at": time.time(), "node": node, "say": sentence[:500]}) + "\n"
        self.storage.call(_append, self.dir(job_id) / "log", line.encode())

    # ---- failed attempts ----

    def record_failure(self, job_id: str, node: str, epoch: int, error: str, progress: int = 0) -> int:
        """One more failed attempt at this job, durable, made when `progress` segments were whole;
        returns how many attempts failed since the job last made progress (a long job that met three
        transient errors hours apart is not failed for them)."""
        folder = self.dir(job_id) / "failures"
        self.storage.makedirs(folder)
        body = json.dumps({"at": time.time(), "node": node, "epoch": epoch, "progress": progress,
                           "error": error[:2000]}).encode()
        self.storage.commit_new(folder / f"{progress:05d}-{time.time_ns()}-{node}.json", body)
        return self.failure_count(job_id, progress)

    def failure_count(self, job_id: str, progress: int | None = None) -> int:
        """Failed attempts at the job (made at `progress` segments, if given)."""
        names = [n for n in self.storage.listdir(self.dir(job_id) / "failures") if n.endswith(".json")]
        if progress is None:
            return len(names)
        return sum(1 for n in names if n.startswith(f"{progress:05d}-"))

    def segment_path(self, job_id: str, seg: SegmentFile) -> Path:
        return self.dir(job_id) / "segments" / seg.name

    def segments_duration(self, job_id: str, segs: dict[int, SegmentFile] | None = None) -> float:
        segs = self.segments(job_id) if segs is None else segs
        paths = [self.segment_path(job_id, s) for s in segs.values()]
        return self.storage.call(lambda: sum(audio.wav_duration(p) for p in paths))

    # ---- markers ----

    def markers(self, job_id: str) -> dict[str, dict]:
        found = {}
        state = self.dir(job_id) / "state"
        for name in self.storage.listdir(state):
            if name in MARKERS:
                try:
                    found[name] = self.storage.read_json(state / name)
                except (ValueError, FileNotFoundError):
                    found[name] = {}
        return found

    def mark(self, job_id: str, marker: str, **info: object) -> bool:
        """Set a durable marker; False if it was set already (the first one stands)."""
        if marker not in MARKERS:
            raise ValueError(marker)
        body = json.dumps({"at": time.time(), **info}).encode()
        state = self.dir(job_id) / "state"
        self.storage.makedirs(state)
        return self.storage.commit_new(state / marker, body)

    # ---- final audio ----

    def audio_path(self, job_id: str) -> Path:
        return self.dir(job_id) / "audio.wav"

    def download_path(self, job_id: str, fmt: str) -> Path:
        """The finished audio in a download format: audio.wav itself, or its copy encoded once
        (audio.flac, audio.ogg) beside it."""
        if fmt not in audio.DOWNLOADS:
            raise ValueError(fmt)
        return self.audio_path(job_id).with_suffix(f".{fmt}")

    def encode_download(self, job_id: str, fmt: str) -> Path:
        """audio.<fmt> from audio.wav, once (written aside, then linked: a copy that won the race
        stands); its path. FLAC encodes a 90-minute job in seconds, Ogg Vorbis in tens of seconds."""
        target = self.download_path(job_id, fmt)
        if fmt == "wav" or self.storage.exists(target):
            return target

        def encode() -> None:
            tmp = target.with_name(f".tmp-audio-{secrets.token_hex(6)}.{fmt}")
            try:
                audio.encode_file(self.audio_path(job_id), tmp, fmt)
                link_new(tmp, target)
            finally:
                _unlink(tmp)

        self.storage.call(encode, timeout=self.storage.timeout + 120)
        return target

    def assemble(self, job_id: str, total: int, sample_rate: int) -> float:
        """Join segments 0..total-1 into audio.wav, once: an existing audio.wav is kept as it is.
        Returns the audio's duration in seconds."""
        segs = self.segments(job_id)
        missing = [i for i in range(total) if i not in segs]
        if missing:
            raise RuntimeError(f"cannot assemble: segments {missing[:5]} missing")
        parts = [self.segment_path(job_id, segs[i]) for i in range(total)]
        target = self.audio_path(job_id)
        # A long job's assembly takes a while: give it a generous bound, scaled by size.
        return self.storage.call(_assemble, parts, target, sample_rate,
                                 timeout=self.storage.timeout + 0.5 * total)


def encode_npz(meta: dict, arrays: dict | None = None) -> bytes:
    """A checkpoint file: `meta` (JSON) and float/int arrays, numpy's npz (no pickle on load)."""
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **(arrays or {}))
    return buf.getvalue()


def _read_npz(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            out = {k: np.array(data[k]) for k in data.files if k != "meta"}
    except FileNotFoundError as exc:
        raise ValueError(f"{path.name} is missing") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise   # the mount (Storage.call sorts mount errors from the rest)
        raise ValueError(f"{path.name} is unreadable: {exc}") from exc
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path.name} is unreadable: {exc}") from exc
    return meta, out


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def _assemble(parts: list[Path], target: Path, sample_rate: int) -> float:
    if target.exists():
        return audio.wav_duration(target)
    tmp = target.with_name(f".tmp-audio-{secrets.token_hex(6)}.wav")
    try:
        frames = audio.concat_wavs(parts, tmp, sample_rate)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        link_new(tmp, target)  # an audio.wav that won the race stands
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return frames / sample_rate
