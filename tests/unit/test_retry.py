from __future__ import annotations

import pytest

from tether.engine._retry import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "nominal"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 4.0),
        (4, 0.5, 60.0, 4.0),
        (10, 1.0, 60.0, 60.0),  # 512 s nominal, capped
        (50, 1.0, 5.0, 5.0),
    ],
)
def test_backoff_is_exponential_with_equal_jitter(
    attempt: int, base: float, cap: float, nominal: float
) -> None:
    delays = [backoff_delay(attempt, base, cap) for _ in range(300)]
    assert all(nominal / 2 <= d <= nominal for d in delays)
    # Jitter: the delays are spread, not one fixed value.
    assert len(set(delays)) > 1
    assert max(delays) - min(delays) > nominal / 10


def test_backoff_zero_base_is_zero() -> None:
    assert backoff_delay(3, 0.0, 60.0) == 0.0


def test_backoff_grows_with_attempts_on_average() -> None:
    means = [sum(backoff_delay(a, 0.1, 100.0) for _ in range(200)) / 200 for a in (1, 2, 3, 4)]
    assert means == sorted(means)
    assert means[3] > 4 * means[0]
