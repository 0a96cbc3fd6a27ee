"""train.budget: the run's wall-clock seconds, counted from the start of fit() (model, feature pass and all).

The decision is made after each epoch: another one starts only when, taking as long as the longest epoch so
far, it would end within the budget. So a run ends within the budget plus the misjudgement of one epoch, and
best.pt is the best epoch so far. A resumed run counts its budget afresh from its own start.
"""

from __future__ import annotations

import time

from ..runtime.distributed import Dist


def now() -> float:
    """The budget's clock (tests put a fake one here)."""
    return time.monotonic()


class Budget:
    def __init__(self, seconds: float | None, clock=None):
        self.seconds, self.clock = seconds, clock or now
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def allows_another(self, epoch_seconds: list[float], dist: Dist = Dist()) -> bool:
        """Whether one more epoch fits; every rank gets the same answer (any rank's clock past it stops all)."""
        if self.seconds is None or not epoch_seconds:
            return True
        return not dist.any(self.elapsed() + max(epoch_seconds) > self.seconds)

    def reason(self) -> str:
        """Why the run stopped, for its summary."""
        return (f"train.budget: {self.elapsed():.0f} s of {self.seconds:.0f} s used, no room for another epoch; "
                f"best.pt is the best epoch so far")
