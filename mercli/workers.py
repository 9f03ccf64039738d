"""Worker processes for a batch of independent items, and Ctrl-C that stops them cleanly.

Ctrl-C in a terminal reaches every process of the command; ``kill -INT`` reaches the main process
alone, which then stops its workers. Either way a worker that is between items leaves at once, and
one in the middle of an item first unwinds it, so that the item's unfinished files are removed
(:mod:`mercli.atomic`), then leaves without taking another. What was finished is kept, and the
same command run again resumes.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from mercli.errors import EXIT_INTERRUPTED, EXIT_SOME_FAILED, MerError


class WorkerDied(MerError):
    """A worker process ended while it held an item (killed, out of memory, a crash in native code)."""

    exit_code = EXIT_SOME_FAILED


def _on_main_thread() -> bool:
    """Signal handlers can only be set, and only run, on the main thread."""
    return threading.current_thread() is threading.main_thread()


@contextmanager
def noticing_ctrl_c() -> Iterator[Callable[[], bool]]:
    """Remember that Ctrl-C was pressed. Some libraries turn the interrupt, when it lands in their
    native code, into an ordinary error, which per-item handling would record as a failure and go
    on from; with this the caller can stop all the same."""
    if not _on_main_thread():
        yield lambda: False
        return
    pressed = False

    def handler(signum: int, frame: object) -> None:
        nonlocal pressed
        pressed = True
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_about_interrupts(sys.unraisablehook)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def _quiet_about_interrupts(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An interrupt inside a native callback (opensmile's) cannot propagate and would be printed as
    a traceback; the signal handler has noted it, so say nothing about it."""

    def hook(report: "sys.UnraisableHookArgs") -> None:
        if not isinstance(report.exc_value, KeyboardInterrupt):
            previous(report)

    return hook


def run_in_workers(make: Callable[..., Callable[[Any], Any]], arguments: tuple, items: Iterable[Any],
                   workers: int) -> Iterator[Any]:
    """Apply the callable that ``make(*arguments)`` builds in each of ``workers`` processes to every
    item, yielding the results as they complete."""
    with started_workers(make, arguments, workers) as results:
        yield from results(items)


@contextmanager
def started_workers(make: Callable[..., Callable[[Any], Any]], arguments: tuple, workers: int
                    ) -> Iterator[Callable[[Iterable[Any]], Iterator[Any]]]:
    """``workers`` processes started at once, each building its callable ``make(*arguments)`` while
    the caller goes on with its own preparations; yields a function that applies them to items,
    yielding the results as they complete. Leaving the block stops them."""
    with noticing_ctrl_c() as pressed:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start, initargs=(make, arguments))
        try:
            # Worker processes inherit the held-back Ctrl-C and take it once _start has set their
            # handler, so that an interrupt during their start-up prints no traceback. The pool
            # starts a process for each submission that finds none idle: one per worker, now.
            with ctrl_c_held_back():
                for _ in range(workers):
                    pool.submit(_started)
            yield functools.partial(_results, pool)
        except BrokenProcessPool:
            if pressed():
                raise KeyboardInterrupt from None
            raise WorkerDied("a worker process ended unexpectedly (killed, out of memory, or a crash in a "
                             "model library); what was finished is kept, and running the same command again "
                             "resumes") from None
        except BaseException:
            for worker in multiprocessing.active_children():  # only this pool starts processes
                worker.terminate()
            raise
        finally:
            # With wait=True, and only once: an earlier shutdown(wait=False) would forget the pool's
            # manager thread, which the interpreter would then wait for at exit, where a second
            # Ctrl-C ends in a traceback. A second Ctrl-C must not cut this clean-up short either.
            with ctrl_c_ignored():
                pool.shutdown(wait=True, cancel_futures=True)


def _results(pool: ProcessPoolExecutor, items: Iterable[Any]) -> Iterator[Any]:
    with ctrl_c_held_back():
        futures = [pool.submit(_handle, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


@contextmanager
def ctrl_c_held_back() -> Iterator[None]:
    """Act on Ctrl-C only once the block is over (a press is deferred, not lost). Processes started
    meanwhile begin with the signal blocked, and take it once they are ready for it."""
    if not _on_main_thread():
        yield
        return
    pressed: list[int] = []
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.signal(signal.SIGINT, previous_handler)
    if pressed and callable(previous_handler):
        previous_handler(signal.SIGINT, None)


@contextmanager
def ctrl_c_ignored() -> Iterator[None]:
    if not _on_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# In each worker process: the callable it applies, and whether it is in the middle of an item.
_function: Callable[[Any], Any] | None = None
_busy = False
_stopping = False


def _start(make: Callable[..., Callable[[Any], Any]], arguments: tuple) -> None:
    global _function
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)  # what the main process sends its workers
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    sys.unraisablehook = _quiet_about_interrupts(sys.unraisablehook)
    try:
        _function = make(*arguments)
    except Exception as error:  # one line, not the pool's traceback; the main process reports the loss
        reason = error if isinstance(error, MerError) else f"{type(error).__name__}: {error}"
        print(f"error: a worker process could not start: {reason}", file=sys.stderr, flush=True)
        os._exit(EXIT_SOME_FAILED)
    atexit.register(_exit_without_teardown)


def _started() -> None:
    """The first item of every worker: it makes the pool start the process."""


def stopping() -> bool:
    """Whether this worker process was told to stop while in the middle of an item (what a library
    that turns the interrupt into an ordinary error would otherwise hide)."""
    return _stopping


def _stop(signum: int, frame: object) -> None:
    """Ctrl-C, or the main process's terminate(). A second signal (Ctrl-C reaches a worker both from
    the terminal and from the main process) changes nothing: the first is already being acted on."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    if not _busy:
        os._exit(EXIT_INTERRUPTED)
    # What a library warns about while its work is cut short (openSMILE: "segment too short") is
    # a consequence of the interrupt, not news for the user.
    warnings.simplefilter("ignore")
    raise KeyboardInterrupt  # unwinds the item, removing its unfinished files; _handle then leaves


def _handle(item: Any) -> Any:
    global _busy
    assert _function is not None, "worker not initialised"
    try:
        _busy = True
        return _function(item)
    except KeyboardInterrupt:
        os._exit(EXIT_INTERRUPTED)
    finally:
        _busy = False
        # Told to stop while working, however the item ended (a library may turn the interrupt into
        # an ordinary error, or the item fail meanwhile): stop all the same. A second signal would
        # change nothing, so a worker that went back to the queue would wait there for ever.
        if _stopping:
            os._exit(EXIT_INTERRUPTED)


def _exit_without_teardown() -> None:
    """End a worker without the interpreter's teardown of torch, CTranslate2, mediapipe and the
    rest (measured: about half a second per worker, which the main process waits for at the end of
    the run). Nothing is lost: each item's files are written atomically and synced before its
    result is sent, and the results travel through a pipe that is written synchronously."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
