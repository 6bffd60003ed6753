"""What an HTTP answer means for a delivery, and how long to wait before the
next attempt. Pure: the caller passes the time and the random draw.

* 2xx: delivered.
* 3xx: a redirect is an answer, not a delivery. Redirects are never followed
  (following one would re-send the body, signature and headers elsewhere, or
  turn the POST into a bodiless GET whose 200 looks delivered): the attempt
  failed, and is retried like a 5xx; dead letter when the retries are spent.
* 410 Gone: the receiver says the endpoint is gone for good: it is disabled
  (logged and counted) and this and later triggers for it are dead-lettered.
* 408, 425, 429, 5xx, a timeout, a connection error or a send that failed
  inside the dispatcher: retried with exponential backoff and jitter, or
  after ``Retry-After`` when given (ASCII delay-seconds or an HTTP date; any
  other value is ignored).
* Any other 4xx: the receiver refuses this request; sending the same bytes
  again cannot change that, so the trigger is dead-lettered at once with the
  answer (re-drive it from ``journey.triggers.deadletter`` once fixed).
* Retries stop at ``max_attempts`` or when the next attempt would start past
  ``retry_budget`` after the first one: dead letter with the last error.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime

DELIVERED, RETRY, DISABLE, REJECTED = "delivered", "retry", "disable", "rejected"
RETRYABLE_4XX = frozenset({408, 425, 429})
DELAY_SECONDS = re.compile(r"[0-9]+")         # ASCII digits only: str.isdigit() also takes "١٢" and "²"
ASCTIME = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}")
LONGEST_DELAY = 10 ** 10                     # seconds; a longer delay-seconds reads as this (beyond any limit)


def classify(status: int | None) -> str:
    """``status`` None: a timeout or a connection error."""
    if status is None:
        return RETRY
    if 200 <= status < 300:
        return DELIVERED
    if 300 <= status < 400:
        return RETRY
    if status == 410:
        return DISABLE
    if status >= 500 or status in RETRYABLE_4XX:
        return RETRY
    return REJECTED


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value or not isinstance(value, str):
        return None
    value = value.strip(" \t")
    if not value.isascii():
        return None
    if DELAY_SECONDS.fullmatch(value):    # (a digit string of any length: int() of 12 digits at most)
        return float(min(int(value[:12]), LONGEST_DELAY))
    if len(value) > 64:                   # no HTTP date is this long
        return None
    try:
        at = parsedate_to_datetime(value)
        if at.tzinfo is None:           # only asctime() dates carry no zone (and mean GMT)
            if not ASCTIME.fullmatch(value):
                return None
            at = at.replace(tzinfo=UTC)
        return max(0.0, at.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None


def backoff(attempt: int, base: float, cap: float, draw: float) -> float:
    """Wait after failed attempt number ``attempt`` (1-based): base * 2^(attempt-1), capped,
    times a jitter factor in [0.5, 1) from ``draw`` in [0, 1) so retries of many triggers spread out."""
    return min(cap, base * (2 ** (attempt - 1))) * (0.5 + draw / 2)


def next_wait(endpoint, attempt: int, first_at: float, now: float, retry_after: float | None,
              draw: float) -> tuple[float | None, str]:
    """Seconds to wait before the next attempt, or (None, why) when the trigger is out of retries."""
    if attempt >= endpoint.max_attempts:
        return None, f"gave up after {attempt} attempts"
    if retry_after is not None:
        if retry_after > endpoint.max_retry_after:
            return None, f"Retry-After {retry_after:.0f}s exceeds max_retry_after"
        wait = retry_after
    else:
        wait = backoff(attempt, endpoint.backoff_base, endpoint.backoff_max, draw)
    if now + wait - first_at > endpoint.retry_budget:
        return None, f"retry budget of {endpoint.retry_budget:.0f}s spent after {attempt} attempts"
    return wait, ""
