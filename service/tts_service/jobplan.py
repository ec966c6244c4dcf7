"""What the worker knows about one job while it runs it: the plan (parts, seed, clips, fingerprints)
and a scan of shared storage (which chunks are usable, where generation goes on from)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engines import Part, Resume
from .jobfiles import SegmentFile


@dataclass
class JobPlan:
    parts: list[Part]
    fingerprints: list[str]       # per part: what its checkpoints must have been made with
    seed: int
    clips: dict[str, np.ndarray]  # uploaded reference clips by voice id
    estimate: int = 0             # chunks expected (from the text), shown until the job ends
    exact: bool = True            # one chunk per part: the total is known from the start


@dataclass
class ChunkInfo:
    n: int                        # the chunk's (segment's) index in the job
    seg: SegmentFile | None
    part: int
    index: int                    # within its part
    final: bool                   # the part's last chunk
    fingerprint: str
    seconds: float = 0.0
    arrays: dict | None = None    # the checkpoint's arrays (stateful engines), read by the scan


@dataclass
class Scan:
    usable: dict[int, ChunkInfo]
    seconds: float                # audio in the usable chunks
    complete: bool
    total: int                    # chunks of the job if complete; else how far it is whole
    parts_todo: list[int]         # parts to generate, in order
    start: int                    # the chunk index generation goes on at
    resume: Resume | None         # from the checkpoint before `start` (stateful engines)
    sentence: str                 # what the scan found worth saying in the job's log
    done: int                     # chunks counted done
    first_index: int = 0          # index within the first part to do of the chunk at `start`

    def total_shown(self, plan: JobPlan, done: int | None = None) -> int:
        """segments_total as the API shows it: exact once known, else the estimate (never below what
        is done plus the chunk in hand)."""
        if self.complete:
            return self.total
        if plan.exact:
            return len(plan.parts)
        done = self.done if done is None else done
        return max(plan.estimate, done + 1)
