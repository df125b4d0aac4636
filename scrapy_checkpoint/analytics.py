"""Recovery analytics: what the run histories of checkpoints say, per site and job type."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .models import Checkpoint, CheckpointRun, CheckpointStatus


@dataclass
class CheckpointStats:
    """Counts over a group of checkpoints and their runs.

    A *recovery* is a run that resumed a checkpoint; it is *refused* when the checkpoint was
    found but could not be resumed (a feed changed since, say), and succeeds otherwise. A run
    is *killed* when a later run started without it closing (SIGKILL, OOM, a lost machine).
    """

    checkpoints: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    runs: int = 0
    killed: int = 0
    recoveries: int = 0
    refused: int = 0
    #: Checkpoints that completed after at least one recovery.
    completed_after_recovery: int = 0
    #: Stored bytes of the checkpoints whose store could tell; how many could not.
    storage_bytes: int = 0
    storage_unknown: int = 0
    resume_seconds: list[float] = field(default_factory=list)
    downtime_seconds: list[float] = field(default_factory=list)

    def add(self, checkpoint: Checkpoint, stored_bytes: int | None, alive: dict[int, bool] | None = None) -> None:
        """Count *checkpoint*; *alive*: whether the worker of each run (by number) is, for
        one shared by scrapy-redis workers whose runs go on side by side."""
        self.checkpoints += 1
        if checkpoint.status is CheckpointStatus.ACTIVE:
            self.active += 1
        elif checkpoint.status is CheckpointStatus.COMPLETED:
            self.completed += 1
        else:
            self.failed += 1
        if stored_bytes is None:
            self.storage_unknown += 1
        else:
            self.storage_bytes += stored_bytes
        runs = checkpoint.runs
        self.runs += len(runs)
        recovered = False
        previous: CheckpointRun | None = None
        for i, run in enumerate(runs):
            if run.outcome(last=i == len(runs) - 1, alive=(alive or {}).get(run.number)) == "killed":
                self.killed += 1
            if run.resumed:
                self.recoveries += 1
                if run.refused is not None:
                    self.refused += 1
                else:
                    recovered = True
                    if run.resume_seconds is not None:
                        self.resume_seconds.append(run.resume_seconds)
                # Only when the run before is known (not beyond the history kept).
                if previous is not None and previous.number == run.number - 1 and previous.ended_at is None:
                    self.downtime_seconds.append((run.started_at - previous.updated_at).total_seconds())
            previous = run
        if recovered and checkpoint.status is CheckpointStatus.COMPLETED:
            self.completed_after_recovery += 1

    @property
    def success_rate(self) -> float | None:
        """Recoveries that were not refused, over all recoveries; None without any."""
        return None if not self.recoveries else (self.recoveries - self.refused) / self.recoveries

    def document(self) -> dict[str, Any]:
        """For --json: every count, the success rate, and medians instead of the samples."""
        doc = asdict(self)
        del doc["resume_seconds"], doc["downtime_seconds"]
        doc["recovery_success_rate"] = self.success_rate
        doc["resume_seconds_median"] = _median(self.resume_seconds)
        doc["downtime_seconds_median"] = _median(self.downtime_seconds)
        return doc


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def group_stats(
    checkpoints: Iterable[tuple[Checkpoint, int | None, dict[int, bool] | None]],
) -> tuple[dict[tuple[str, str], CheckpointStats], CheckpointStats]:
    """Stats per (site domain, job type), sorted, and over all, of (checkpoint, stored bytes,
    which of its runs' workers are alive)."""
    groups: dict[tuple[str, str], CheckpointStats] = {}
    total = CheckpointStats()
    for checkpoint, size, alive in checkpoints:
        groups.setdefault((checkpoint.site_domain, checkpoint.job_type), CheckpointStats()).add(checkpoint, size, alive)
        total.add(checkpoint, size, alive)
    return dict(sorted(groups.items())), total
