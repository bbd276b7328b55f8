"""SIGTERM stops a study as Ctrl-C does (no ray import).

Ray Tune, while it runs, handles SIGINT: it stops the trials, saves the study's state and returns,
so the MLflow runs end KILLED and `--resume` continues. A SIGTERM (a scheduler's kill, `timeout`,
a container stop) used to end the driver at once (ray.init's own handler exits 15), leaving the
runs RUNNING. StopSignals, around a study's run, routes SIGTERM to Ray Tune's SIGINT handler and
remembers it, so the command exits 143 (130 after Ctrl-C); outside Ray Tune's run, or for a second
signal, it raises KeyboardInterrupt. `rearm()` puts it back after ray.init replaced it.
"""
from __future__ import annotations

import signal
import sys

_ACTIVE: list["StopSignals"] = []


class StopSignals:
    def __init__(self):
        self.signum = signal.SIGINT
        self._old = None

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C (or nothing), 143 after SIGTERM."""
        return 128 + int(self.signum)

    def _on_term(self, signum, frame):
        self.signum = signum
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            print("gradmix-tune: SIGTERM: stopping the trials and saving the study (again: stop at once)",
                  file=sys.stderr, flush=True)
            handler(signal.SIGINT, frame)  # Ray Tune's: stop the run, save its state; it then restores
            # the default SIGINT handler, so a second signal lands in the else branch
        else:
            raise KeyboardInterrupt

    def install(self) -> None:
        try:
            signal.signal(signal.SIGTERM, self._on_term)
        except ValueError:  # not the main thread: signals are not ours to handle
            pass

    def __enter__(self):
        try:
            self._old = signal.getsignal(signal.SIGTERM)
        except ValueError:
            self._old = None
        self.install()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        if self._old is not None:
            try:
                signal.signal(signal.SIGTERM, self._old)
            except ValueError:
                pass
        return False


def rearm() -> None:
    """After ray.init (which installs Ray's own SIGTERM handler in the driver): the study's again."""
    if _ACTIVE:
        _ACTIVE[-1].install()
