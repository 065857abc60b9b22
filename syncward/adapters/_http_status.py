"""What an HTTP answer or a transport failure means for the job: retry, or give up.

Classification (the handler signals of `syncward.errors`):
  * connection errors, timeouts, read errors, protocol errors (a peer that closed early,
    a reset) -> `Retry` with the runtime's back-off;
  * 408, 425, 429 and every 5xx -> `Retry`, honouring ``Retry-After`` (delay-seconds or
    an HTTP-date) when the server sent one; a 429 or 503 with ``Retry-After`` holds back
    the job's whole limit key (`syncward.Limit`): the server asked every request to wait;
  * any other 4xx, an unexpected 1xx/3xx, too many redirects, an unsupported scheme, an
    undecodable body -> `Permanent`.
A body shorter than its Content-Length is retryable too; the streaming code raises that
one itself, with the number of bytes kept for resume.
"""

from __future__ import annotations

import email.utils
import math
import time

import httpx

from syncward.errors import Permanent, Retry

__all__ = ["MAX_RETRY_AFTER", "check_status", "retry_after", "transport_signal"]

#: Longer waits than this (an hour) are cut to it: a job should not sleep for days.
MAX_RETRY_AFTER = 3600.0
_RETRYABLE_4XX = frozenset({408, 425, 429})
_HOLD_KEY = frozenset({429, 503})  # with Retry-After: "everyone, wait", not "this one"


def retry_after(value: str | None, *, now: float | None = None,
                limit: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None when absent or unreadable.

    Accepts delay-seconds (fractions too, leniently) and HTTP-dates; a date in the past
    means 0. The result is capped at ``limit``.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # HTTP-dates are GMT; a date without a zone is not one
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), limit)


def check_status(response: httpx.Response, *, what: str,
                 max_retry_after: float = MAX_RETRY_AFTER) -> None:
    """Return if ``response`` is a 2xx, otherwise raise the job's outcome.

    Raises:
        Retry: 408, 425, 429 or 5xx (``after`` from Retry-After when present).
        Permanent: any other status.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = f"{what}: HTTP {status} {response.reason_phrase}".rstrip()
    if status in _RETRYABLE_4XX or 500 <= status < 600:
        after = retry_after(response.headers.get("retry-after"), limit=max_retry_after)
        if after is not None:
            reason += f" (Retry-After {after:g}s)"
        raise Retry(reason, after=after,
                    hold_key=after is not None and status in _HOLD_KEY)
    raise Permanent(reason)


def transport_signal(exc: httpx.HTTPError, *, what: str) -> Retry | Permanent:
    """The signal for an exception raised by httpx while sending or receiving."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol):
        return Retry(f"{what}: {type(exc).__name__}: {text}")
    return Permanent(f"{what}: {type(exc).__name__}: {text}")
