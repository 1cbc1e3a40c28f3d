"""Exponential backoff with jitter, shared by the transports (reconnects) and the Jobs client
(RequestThrottled retries).

"Full jitter" from the AWS Architecture Blog post "Exponential Backoff and Jitter": the n-th delay
is drawn uniformly from [min, cap] with cap = min(max, min * 2**n), so a fleet of gateways that
lost the same broker at the same moment does not come back in lock-step. `jitter` narrows the
random range to the top `jitter` fraction of it (1.0: the whole range, 0.0: no randomness).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random


class Backoff:
    def __init__(
        self,
        min: float,
        max: float,
        jitter: float = 1.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if min <= 0 or max < min:
            raise ValueError(f"backoff needs 0 < min <= max, got min={min} max={max}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter}")
        self.min = min
        self.max = max
        self.jitter = jitter
        self._rng = rng
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts as one more failed attempt."""
        cap = self.max if self.attempts >= 64 else min(self.max, self.min * 2.0**self.attempts)
        self.attempts += 1
        low = cap - (cap - self.min) * self.jitter
        if self._rng is None:
            # At the first failure: a connection that never fails needs no `random` (issue 18).
            import random

            self._rng = random.Random()
        return self._rng.uniform(low, cap)

    def reset(self) -> None:
        """Call after a success: the next failure starts again from `min`."""
        self.attempts = 0
