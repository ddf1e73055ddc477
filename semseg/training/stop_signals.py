"""Stopping a training run cleanly on a signal: finish the step, save, exit with a status that says so.

SIGTERM (a cluster's preemption, ``timeout``, ``scancel``, torchrun passing on its own) and SIGUSR1
(SLURM's ``--signal`` warning before the time limit) ask the run to stop; so does the first Ctrl-C
(SIGINT). The handler only records the request: the training loop looks at it before each
iteration, where the network, optimizer and random state are consistent, saves ``last.pth`` with
the iteration it reached, and exits. ``resume auto`` then continues from exactly that iteration.
A second Ctrl-C stops at once, saving nothing.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from semseg.training.distributed import max_over_ranks

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved, "try again" (resume auto); a requeue script tells it apart
EXIT_INTERRUPTED = 130  # Ctrl-C, saved as well

_STOPPING = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ())

# When processes received different signals, the later name wins: a Ctrl-C anywhere is a Ctrl-C.
_PRECEDENCE = (None, "SIGUSR1", "SIGTERM", "SIGINT")


class StopRequested(Exception):
    """Raised by the training loop, between two iterations, once a stop signal has arrived."""

    def __init__(self, signal_name: str, iteration: int):
        super().__init__(f"{signal_name} received: stopping before iteration {iteration + 1}")
        self.signal_name = signal_name
        self.iteration = iteration

    @property
    def exit_status(self) -> int:
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_PREEMPTED


class StopSignals:
    """Record SIGTERM, SIGUSR1 and SIGINT while installed (a context manager); ``received`` names the first."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.received = self.received or name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for number in _STOPPING:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def agreed_signal(received: str | None, device: torch.device) -> str | None:
    """The stop signal every process acts on: the one any process received (the latest in ``_PRECEDENCE``).

    A signal reaches the processes of a run one after another (torchrun passes it to each in turn), so at
    a given iteration some may have it and others not yet. All stop together, and all name the signal
    and exit with its status, whichever process it reached first.
    """
    return _PRECEDENCE[max_over_ranks(_PRECEDENCE.index(received), device)]
