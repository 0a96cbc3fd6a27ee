"""Ctrl-C and SIGTERM during a run: finish the step, save last.pt, stop with the command that continues it.

A second Ctrl-C stops at once (last.pt stays as it was). A repeated SIGTERM is the same stop, not a harder one:
a torchrun launcher killed with -9 makes Linux send its ranks the parent-death signal once for each of its
threads as they end, 7-8 ms apart, and a rank that quit at the second one left the others inside a collective.
Before training starts (the feature pass may be long) there is no step to finish: the stop is at once.
"""

from __future__ import annotations

import signal


class StopBeforeTraining(BaseException):
    """Raised by the handler while nothing has trained yet. A BaseException, as KeyboardInterrupt is, so that
    code which catches Exception around a step of the setup (the frozen-prefix check) cannot swallow it."""


class StopGuard:
    """While entered, SIGINT and SIGTERM ask the run to stop after its step (`requested` names the signal)."""

    def __init__(self, console):
        self.console = console
        self.requested: str | None = None
        self.training = False  # set when the first epoch begins
        self._previous: dict = {}

    def __enter__(self) -> StopGuard:
        self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            if signum != signal.SIGINT:  # SIGTERM again: already stopping (see the module's docstring)
                return
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C twice: stop now, last.pt
            raise KeyboardInterrupt  # stays as it was
        self.requested = name
        if not self.training:  # computing features: nothing to finish, stop now
            raise StopBeforeTraining
        self.console.print(f"[yellow]{name}: finishing this step, then saving last.pt "
                           "(press Ctrl-C again to stop at once)[/]")
