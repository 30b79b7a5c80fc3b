"""A graceful stop: SIGINT (Ctrl-C), SIGTERM or SIGUSR1 (a scheduler's warning before it preempts or times out
a job) asks training to finish its update, save last.pt and exit.

    with GracefulStop() as stop:
        while …:
            update()
            if stop.requested:
                break           # the caller saves and raises TrainingStopped

A second signal aborts at once (KeyboardInterrupt); the checkpoints already on disk are whole
either way, since they are written by rename.  The exit code is 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM, 138 for SIGUSR1), as a shell reports a process the signal ended.

Under SLURM through Hydra's submitit launcher, submitit's own SIGUSR1 handler requeues the job;
`hand_on()` calls it once last.pt is saved, so the requeued job resumes from it (resume=auto).
"""

import logging
import signal
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ())


class TrainingStopped(Exception):
    """Training ended early on a signal, with last.pt saved at `step`."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """Catches SIGINT and SIGTERM for a block (main thread only; elsewhere it never requests a stop)."""

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _first(self, signum, frame) -> None:
        self.signum = signum
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._again)
        log.warning(
            "%s: finishing this update, then saving last.pt (Ctrl-C again aborts at once)", signal.Signals(signum).name
        )

    def hand_on(self) -> None:
        """Call the handler that was in place before for the signal received (e.g. submitit's requeue)."""
        previous = self.previous.get(self.signum)
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(self.signum, None)

    def _again(self, signum, frame) -> None:
        raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborted")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._first) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
