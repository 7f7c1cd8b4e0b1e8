"""Sending tasks with a deadline: the one way visual_reco talks to the broker.

A broker that is down makes kombu retry the connection for seconds, and one that accepts
connections but never answers (a frozen Redis) would hold the caller until the socket
timeout, minutes by default. So every call runs in a thread of its own and the caller waits
at most its deadline. Threads still waiting on such a broker are bounded; past the bound,
calls fail at once instead of piling up. They do no database work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery import current_app

from visual_reco.conf import reco_settings

MAX_WAITING_CALLS = 8
_waiting = threading.BoundedSemaphore(MAX_WAITING_CALLS)

T = TypeVar("T")


def call_with_deadline(function: Callable[[], T], timeout: float) -> T:
    """Return ``function()``, run in a daemon thread; raise its error, or `TimeoutError`
    after ``timeout`` seconds (the thread may still finish later) or at once when
    `MAX_WAITING_CALLS` earlier calls are still waiting."""
    if not _waiting.acquire(blocking=False):
        raise TimeoutError(f"the broker has not answered {MAX_WAITING_CALLS} calls")
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc
        finally:
            _waiting.release()
            done.set()

    threading.Thread(target=run, name="visual_reco-broker", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"the broker did not answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def publish(name: str, args: tuple[Any, ...], **options: Any) -> None:
    """Send task ``name`` with ``args`` (no result kept) within ``PUBLISH_TIMEOUT``; raise
    the broker's error or `TimeoutError` (the message may still go out later: visual_reco's
    tasks are idempotent)."""
    app = current_app._get_current_object()
    call_with_deadline(
        lambda: app.send_task(name, args=args, retry=False, ignore_result=True, **options),
        reco_settings.PUBLISH_TIMEOUT)


def call(name: str, args: tuple[Any, ...], timeout: float, **options: Any) -> Any:
    """Send task ``name`` and return its result, both within ``timeout`` seconds; raise the
    broker's or the task's error, or `TimeoutError`. Needs a result backend."""
    app = current_app._get_current_object()

    def send_and_wait() -> Any:
        result = app.send_task(name, args=args, retry=False, ignore_result=False,
                               expires=timeout, **options)
        try:
            return result.get(timeout=timeout)
        finally:
            result.forget()

    return call_with_deadline(send_and_wait, timeout)
