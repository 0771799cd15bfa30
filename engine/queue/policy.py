"""Who gets the next free batch slot: the queue's scheduling policy, pure Python, no torch, no threads of its own.

Kept apart from execution (vLLM's engine/scheduler split) so fairness, priorities and limits are tested with
scripted arrivals in milliseconds, and the worker stays a plain loop that asks "what next?".

The rules (docs/ARCHITECTURE.md, "Issue 5 design"):

- Work is counted in **samples** (one image each). A job of ``count`` 10 is ten samples; they may start in
  different steps of one running batch.
- Free slots go **round-robin over users**, one sample per turn, FIFO within a user. A user who asked for ten
  images gets one slot per round like everyone else.
- **Priority classes**: a lower number is served first (0 interactive, 1 background). Within a class, round-robin.
- **Size**: only samples of the running batch's size can join it. When the longest-waiting job at the head of a
  user's queue has another size, the policy stops admitting (the batch drains) and the next batch takes that
  size, so no size starves.
- **Limits**: at most ``max_jobs_per_user`` unfinished jobs per user and ``max_queued`` in all; over either,
  :class:`QueueFullError` says which and what to do.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

Size = tuple[int, int]

INTERACTIVE = 0
BACKGROUND = 1


class QueueFullError(RuntimeError):
    """A submission over a limit; the message says which limit and what the user can do."""


class Schedulable(Protocol):
    """What the policy needs of a job (``engine.queue.jobs.Job`` provides it)."""

    id: int
    user_id: int
    priority: int
    size: Size
    samples_total: int


@dataclass
class _Entry:
    job: Schedulable
    arrival: int
    admitted: int = 0  # samples handed to the worker so far

    @property
    def waiting(self) -> int:
        return self.job.samples_total - self.admitted


@dataclass
class SchedulingPolicy:
    """Queued jobs by user; hands out sample slots fairly. Thread-safe: the loop submits, the worker admits."""

    max_jobs_per_user: int = 3
    max_queued: int = 100
    _users: dict[int, deque[_Entry]] = field(default_factory=dict)
    _served: dict[int, int] = field(default_factory=dict)  # user → turn of their last slot (new users: never)
    _turns: itertools.count = field(default_factory=itertools.count)
    _entries: dict[int, _Entry] = field(default_factory=dict)
    _unfinished: dict[int, int] = field(default_factory=dict)  # user → jobs queued or running
    _arrivals: itertools.count = field(default_factory=itertools.count)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- the loop's side -------------------------------------------------------------------------------------

    def add(self, job: Schedulable) -> None:
        """Queue ``job``, or raise :class:`QueueFullError`."""
        with self._lock:
            if self._unfinished.get(job.user_id, 0) >= self.max_jobs_per_user:
                raise QueueFullError(
                    f"you already have {self.max_jobs_per_user} jobs queued or running; wait for one to finish "
                    "or cancel one")
            if len(self._entries) >= self.max_queued:
                raise QueueFullError(f"the queue is full ({self.max_queued} jobs waiting); try again in a minute")
            entry = _Entry(job, next(self._arrivals))
            self._entries[job.id] = entry
            self._users.setdefault(job.user_id, deque()).append(entry)
            self._unfinished[job.user_id] = self._unfinished.get(job.user_id, 0) + 1

    def remove(self, job_id: int) -> bool:
        """Withdraw a job's samples that have not started (cancel); True if it was still queued."""
        with self._lock:
            entry = self._entries.pop(job_id, None)
            if entry is None:
                return False
            queue = self._users.get(entry.job.user_id)
            if queue is not None:
                queue.remove(entry)
                if not queue:
                    del self._users[entry.job.user_id]
            return True

    def finished(self, job: Schedulable) -> None:
        """A job ended (done, failed or cancelled): its user may submit again."""
        with self._lock:
            self.remove(job.id)
            left = self._unfinished.get(job.user_id, 0) - 1
            if left > 0:
                self._unfinished[job.user_id] = left
            else:
                self._unfinished.pop(job.user_id, None)

    # -- the worker's side -----------------------------------------------------------------------------------

    def has_waiting(self, max_priority: int | None = None) -> bool:
        with self._lock:
            return any(e.waiting > 0 and (max_priority is None or e.job.priority <= max_priority)
                       for e in self._entries.values())

    def next_size(self) -> Size | None:
        """The size the next batch should take: that of the longest-waiting job at the head of a user's queue."""
        with self._lock:
            heads = self._heads()
            if not heads:
                return None
            best = min(heads, key=lambda e: (e.job.priority, e.arrival))
            return best.job.size

    def admit(self, size: Size, free_slots: int) -> list[Schedulable]:
        """Hand out up to ``free_slots`` samples of ``size``; one list item per sample (a job may repeat).

        Returns nothing when another size should go next (the running batch then drains).
        """
        out: list[Schedulable] = []
        with self._lock:
            if free_slots <= 0 or self.next_size() not in (size, None):
                return out
            while len(out) < free_slots:
                entry = self._next_for(size)
                if entry is None:
                    break
                entry.admitted += 1
                out.append(entry.job)
                user = entry.job.user_id
                self._served[user] = next(self._turns)  # this user had its turn
                if entry.waiting == 0:
                    self._entries.pop(entry.job.id, None)
                    queue = self._users[user]
                    queue.remove(entry)
                    if not queue:
                        del self._users[user]
                if self.next_size() not in (size, None):
                    break
        return out

    def _heads(self) -> list[_Entry]:
        """Each user's first job with samples still waiting."""
        heads = []
        for queue in self._users.values():
            for entry in queue:
                if entry.waiting > 0:
                    heads.append(entry)
                    break
        return heads

    def _next_for(self, size: Size) -> _Entry | None:
        """The next head entry of ``size``: lowest priority class, then the user served longest ago (users never
        served first), then the oldest job."""
        best: _Entry | None = None
        best_key: tuple[int, int, int] | None = None
        for user, user_queue in self._users.items():
            head = next((e for e in user_queue if e.waiting > 0), None)
            if head is None or head.job.size != size:
                continue
            key = (head.job.priority, self._served.get(user, -1), head.arrival)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best

    # -- what users see --------------------------------------------------------------------------------------

    def positions(self) -> dict[int, int]:
        """Queue position of every job not yet started (1 = next), simulating the round-robin order."""
        with self._lock:
            users = sorted(self._users, key=lambda u: (self._served.get(u, -1), self._users[u][0].arrival))
            queues = {user: [e for e in self._users[user] if e.admitted == 0] for user in users}
            order: list[int] = []
            for priority in sorted({e.job.priority for e in self._entries.values()}):
                lanes = [deque(e for e in q if e.job.priority == priority) for q in queues.values()]
                while any(lanes):
                    for lane in lanes:
                        if lane:
                            order.append(lane.popleft().job.id)
            return {job_id: i + 1 for i, job_id in enumerate(order)}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
