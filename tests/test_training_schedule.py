"""A1111 learning-rate schedule syntax: the rate at each step, where training stops, and named mistakes."""

from __future__ import annotations

import pytest

from engine.requests import RequestError
from engine.training.schedule import LearningRateSchedule


def test_each_rate_holds_through_its_step_and_a_bare_last_rate_runs_to_the_end() -> None:
    schedule = LearningRateSchedule.parse("5e-3:200, 1e-3:1000, 1e-4")
    assert [schedule.rate(s) for s in (1, 200, 201, 1000, 1001, 50_000)] == [5e-3, 5e-3, 1e-3, 1e-3, 1e-4, 1e-4]
    assert schedule.last_step is None and schedule.total_steps(3000) == 3000
    assert str(schedule) == "0.005:200, 0.001:1000, 0.0001"


def test_a_schedule_whose_rates_all_end_stops_training() -> None:
    schedule = LearningRateSchedule.parse(" 0.01:10 ,0.001:50 ")
    assert schedule.total_steps(1000) == 50 and schedule.total_steps(20) == 20
    assert schedule.rate(10) == 0.01 and schedule.rate(11) == 0.001


def test_a_single_number_is_a_constant_rate() -> None:
    assert LearningRateSchedule.parse("0.005") == LearningRateSchedule.constant(0.005)
    assert LearningRateSchedule.parse(1e-5).rate(7) == 1e-5


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    ("5e-3:200,, 1e-4", "empty"),
    ("fast", "part 1 ('fast'): 'fast' is not a number"),
    ("5e-3:200, -1e-4", "part 2 ('-1e-4'): the rate must be a positive number"),
    ("5e-3, 1e-4", "part 1 ('5e-3'): only the last rate may leave out its step"),
    ("5e-3:200, 1e-3:100", "part 2 ('1e-3:100'): steps must increase (this one ends at 100, the previous at 200)"),
    ("5e-3:2.5", "part 1 ('5e-3:2.5'): '2.5' is not a whole step number"),
    ("nan", "positive number"),
])
def test_mistakes_are_named_with_their_position(text: str, words: str) -> None:
    with pytest.raises(RequestError, match=r"^lr") as caught:
        LearningRateSchedule.parse(text)
    assert words in str(caught.value)
