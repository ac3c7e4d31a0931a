"""Temporarily handling SIGINT and SIGTERM (``btomo record``, ``live``, the recording writer).

Python runs signal handlers in the main thread, whichever thread the signal reached, so a
handler installed here sees every SIGINT and SIGTERM of the process while it is in place.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

__all__ = ["handling_stop_signals", "first_stops_second_interrupts"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handling_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[dict[int, Any] | None]:
    """Route SIGINT and SIGTERM to ``handler`` inside the block, then restore the handlers.

    Yields the previous handlers ({signal: handler}), or None off the main thread, where
    handlers cannot be installed (the block then runs with the handlers as they are).
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield previous
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def first_stops_second_interrupts(on_first: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, the first SIGINT / SIGTERM calls ``on_first(signum)`` (a clean stop);
    any later one raises KeyboardInterrupt at once. Main thread only; elsewhere nothing."""
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        if len(seen) > 1:
            raise KeyboardInterrupt
        on_first(signum)

    with handling_stop_signals(handler):
        yield
