"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (`timeout`, a job scheduler).

While a run trains, these signals are only recorded (`deferred`): the loop finishes the step it
is in, saves a checkpoint at that step and raises `Interrupted`, which `nexus train` turns into
exit status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a
process the signal ended. A second Ctrl-C quits at once without saving (a user who insists
gets out; the save is atomic, so the previous checkpoint stays whole); further SIGTERMs are
absorbed, since the programs that send them (timeout, torchrun, schedulers) follow up with
SIGKILL when they mean it. A signal that is ignored (`nohup`) stays ignored.

Outside that window, `nexus` turns SIGTERM into `Terminated` (a KeyboardInterrupt), so that a
terminated command unwinds like an interrupted one: locks released, a half-made `--out`
removed, exit status 143.

Nothing here imports torch: the `nexus` command installs its SIGTERM handler before any
command runs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was (outside a training loop)."""

    signum = signal.SIGTERM


class Interrupted(KeyboardInterrupt):
    """A training run stopped by a signal after a whole step. `checkpoint` is where its state
    is (None when no step was trained, so there was nothing to save); `step` the last step
    finished."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None):
        super().__init__(signal_name(signum))
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(error: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(error, "signum", signal.SIGINT))


def terminate(signum, frame) -> None:
    raise Terminated()


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind the program as Ctrl-C does (main thread only; an ignored SIGTERM
    stays ignored)."""
    if _in_main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminate)


@dataclass
class StopRequest:
    """The signal received while deferring, if any."""

    signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


_active: StopRequest | None = None  # the request of the outermost `deferred` in force


@contextlib.contextmanager
def deferred(enabled: bool = True):
    """Record SIGINT and SIGTERM instead of acting on them; yields the `StopRequest` the
    training loop polls. Handlers are restored on exit. Off the main thread (where Python
    cannot install handlers) or when not `enabled`, signals keep their usual effect.

    Nested, it yields the outer request: `nexus train` defers from its start, because an
    exception raised by a signal while torch is being imported can be swallowed there (torch
    catches whatever importing numpy raises), losing the signal; the run then sees it."""
    global _active
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    if not enabled or not _in_main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def record(signum, frame):
        if request.signum is None:
            request.signum = signum
            if previous[signal.SIGINT] is not None:  # the next Ctrl-C quits at once
                signal.signal(signal.SIGINT, previous[signal.SIGINT])

    for s, handler in previous.items():
        if handler is not signal.SIG_IGN and handler is not None:
            signal.signal(s, record)
    _active = request
    try:
        yield request
    finally:
        _active = None
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


def check(request: StopRequest | None, step: int | None = None) -> None:
    """Raise `Interrupted` if a signal has been recorded."""
    if request:
        raise Interrupted(request.signum, step)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
