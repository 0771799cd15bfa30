"""Learning-rate schedules in A1111's syntax: ``"5e-3:200, 1e-3:1000, 1e-4"``.

Each ``rate:step`` holds up to and including that step (steps count from 1); a last rate without a step runs to
the end of training; when every rate has a step, training stops after the last one. People paste these from A1111
guides, so the syntax is kept exactly, and every mistake is named with its position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.requests import RequestError


@dataclass(frozen=True)
class LearningRateSchedule:
    """Piecewise-constant rates: ``pieces[i] = (rate, last_step)``; ``last_step`` None only for the final piece."""

    pieces: tuple[tuple[float, int | None], ...]

    @classmethod
    def parse(cls, text: str | float, *, option: str = "lr") -> LearningRateSchedule:
        """Read ``text``; :class:`RequestError` naming ``option`` and the bad part when it is not a schedule."""
        if isinstance(text, int | float):
            text = repr(float(text))
        parts = [p.strip() for p in str(text).split(",")]
        if not parts or any(not p for p in parts):
            raise RequestError(f"{option}: empty; write a rate like 0.005, or rates with their last steps like "
                               "'5e-3:200, 1e-3:1000, 1e-4'")
        pieces: list[tuple[float, int | None]] = []
        previous = 0
        for index, part in enumerate(parts, start=1):
            rate_text, sep, step_text = part.partition(":")
            where = f"{option} part {index} ({part!r})"
            try:
                rate = float(rate_text)
            except ValueError:
                raise RequestError(f"{where}: {rate_text.strip()!r} is not a number") from None
            if not math.isfinite(rate) or rate <= 0:
                raise RequestError(f"{where}: the rate must be a positive number")
            if not sep:
                if index != len(parts):
                    raise RequestError(f"{where}: only the last rate may leave out its step (write rate:step)")
                pieces.append((rate, None))
                break
            try:
                step = int(step_text)
            except ValueError:
                raise RequestError(f"{where}: {step_text.strip()!r} is not a whole step number") from None
            if step <= previous:
                raise RequestError(f"{where}: steps must increase (this one ends at {step}, the previous at "
                                   f"{previous})")
            pieces.append((rate, step))
            previous = step
        return cls(tuple(pieces))

    @classmethod
    def constant(cls, rate: float) -> LearningRateSchedule:
        return cls(((rate, None),))

    @property
    def last_step(self) -> int | None:
        """Where the schedule itself ends training (None: it runs as long as the step budget)."""
        return self.pieces[-1][1]

    def total_steps(self, budget: int) -> int:
        """Steps to train: the schedule's end when it has one and comes first, otherwise ``budget``."""
        end = self.last_step
        return budget if end is None else min(end, budget)

    def rate(self, step: int) -> float:
        """The rate for ``step`` (1-based); past the schedule's end the last rate."""
        for rate, last in self.pieces:
            if last is None or step <= last:
                return rate
        return self.pieces[-1][0]

    def __str__(self) -> str:
        return ", ".join(f"{rate:g}" if last is None else f"{rate:g}:{last}" for rate, last in self.pieces)
