"""The scheduling policy alone: fairness per slot, priorities, sizes, limits and positions, with scripted arrivals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.queue.policy import BACKGROUND, INTERACTIVE, QueueFullError, SchedulingPolicy

S64, S128 = (64, 64), (128, 128)
_next_id = iter(range(1, 10_000))


@dataclass(eq=False)
class FakeJob:
    user_id: int
    samples_total: int = 1
    size: tuple[int, int] = S64
    priority: int = INTERACTIVE
    id: int = 0

    def __post_init__(self) -> None:
        self.id = next(_next_id)


def _users(granted: list[FakeJob]) -> list[int]:
    return [job.user_id for job in granted]


def test_one_users_big_job_does_not_starve_another_users_single_image() -> None:
    policy = SchedulingPolicy()
    big = FakeJob(user_id=1, samples_total=10)
    policy.add(big)
    assert _users(policy.admit(S64, 2)) == [1, 1]  # alone, A fills the batch
    small = FakeJob(user_id=2)
    policy.add(small)
    # The next free slot goes to B, although A still has 8 samples waiting and arrived first.
    assert policy.admit(S64, 1) == [small]
    assert _users(policy.admit(S64, 3)) == [1, 1, 1]


def test_slots_alternate_between_users_per_sample() -> None:
    policy = SchedulingPolicy()
    for user, count in ((1, 4), (2, 4), (3, 1)):
        policy.add(FakeJob(user_id=user, samples_total=count))
    assert _users(policy.admit(S64, 7)) == [1, 2, 3, 1, 2, 1, 2]
    assert _users(policy.admit(S64, 8)) == [1, 2]
    assert len(policy) == 0


def test_interactive_work_goes_before_background_work() -> None:
    policy = SchedulingPolicy()
    background = FakeJob(user_id=1, samples_total=3, priority=BACKGROUND)
    policy.add(background)
    interactive = FakeJob(user_id=2, samples_total=2)
    policy.add(interactive)
    assert policy.admit(S64, 3) == [interactive, interactive, background]
    assert policy.has_waiting(max_priority=INTERACTIVE) is False
    assert policy.has_waiting() is True


def test_another_size_at_the_head_drains_the_batch_then_goes_next() -> None:
    policy = SchedulingPolicy()
    first = FakeJob(user_id=1, samples_total=2, size=S64)
    other = FakeJob(user_id=2, size=S128)
    policy.add(first)
    policy.add(other)
    assert policy.next_size() == S64
    assert policy.admit(S64, 8) == [first, first]  # then it stops: the 128 job is now the oldest head
    late = FakeJob(user_id=3, size=S64)
    policy.add(late)
    assert policy.admit(S64, 8) == []  # the running 64 batch drains instead of admitting the newcomer
    assert policy.next_size() == S128
    assert policy.admit(S128, 8) == [other]
    assert policy.next_size() == S64 and policy.admit(S64, 8) == [late]


def test_limits_per_user_and_in_all() -> None:
    policy = SchedulingPolicy(max_jobs_per_user=2, max_queued=3)
    a1, a2 = FakeJob(user_id=1), FakeJob(user_id=1)
    policy.add(a1)
    policy.add(a2)
    with pytest.raises(QueueFullError, match="2 jobs"):
        policy.add(FakeJob(user_id=1))
    policy.admit(S64, 1)  # a1 runs: still counts until it finishes
    with pytest.raises(QueueFullError, match="2 jobs"):
        policy.add(FakeJob(user_id=1))
    policy.finished(a1)
    policy.add(FakeJob(user_id=1))
    policy.add(FakeJob(user_id=2))
    with pytest.raises(QueueFullError, match="queue is full"):
        policy.add(FakeJob(user_id=3))


def test_positions_follow_the_round_robin_order_and_removal() -> None:
    policy = SchedulingPolicy()
    a1, a2, b1 = FakeJob(user_id=1), FakeJob(user_id=1), FakeJob(user_id=2)
    for job in (a1, a2, b1):
        policy.add(job)
    assert policy.positions() == {a1.id: 1, b1.id: 2, a2.id: 3}
    assert policy.remove(b1.id) is True and policy.remove(b1.id) is False
    assert policy.positions() == {a1.id: 1, a2.id: 2}
    policy.admit(S64, 1)
    assert policy.positions() == {a2.id: 1}
