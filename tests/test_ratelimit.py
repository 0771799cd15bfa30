"""Per-user token buckets for reactions and buttons."""

from bot.ratelimit import RateLimiter


def test_bucket_empties_then_refills_per_user() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow(1) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(2)  # another member is not affected
    assert 0 < limiter.retry_after(1) <= 20
    now[0] += 20.0  # 3 per minute: one token back after 20 s
    assert limiter.allow(1)
    assert not limiter.allow(1)
    now[0] += 600
    assert [limiter.allow(1) for _ in range(4)] == [True, True, True, False]  # capped at capacity
