"""Event-time helpers: parsing, formatting and durations.

All times inside journey are integers: milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import re
import time as _time
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS_SECOND = 1000
MS_MINUTE = 60 * MS_SECOND
MS_HOUR = 60 * MS_MINUTE
MS_DAY = 24 * MS_HOUR
MS_WEEK = 7 * MS_DAY

# Accept event times between 1970 and 2200; anything else is a producer bug.
MIN_TS = 0
MAX_TS = 7258118400000
MIN_YEAR, MAX_YEAR = 1970, 2199   # the years of MIN_TS .. MAX_TS
MAX_TIME_CHARS = 64               # no ISO-8601 time or epoch-ms string is longer


_MS = timedelta(milliseconds=1)
_fromisoformat = datetime.fromisoformat


class TimeError(ValueError):
    """A time value that cannot be understood."""


def _epoch_ms(dt: datetime) -> int:
    """An aware datetime as epoch milliseconds (exact below the millisecond: floored)."""
    return round(dt.timestamp() * 1000) if dt.microsecond % 1000 == 0 else (dt - EPOCH) // _MS


def parse_time(value) -> int:
    """Parse an event time: ISO-8601 with ``Z`` or an offset, or epoch milliseconds.

    Returns epoch milliseconds. Raises :class:`TimeError` with a readable
    message otherwise. Booleans are not numbers here.
    """
    if type(value) is str and len(value) > MAX_TIME_CHARS:
        raise TimeError(f"not a time: a string of {len(value)} characters")
    if type(value) is str and not value.isdigit():
        # the usual case first: ISO-8601 as sent (whitespace and the rest take the long way)
        try:
            dt = _fromisoformat(value)
        except ValueError:
            dt = None
        if dt is not None and dt.tzinfo is not None:
            ms = _epoch_ms(dt)
            if MIN_TS <= ms <= MAX_TS:
                return ms
    if isinstance(value, str):
        s = value.strip()
        if not s:
            raise TimeError("empty time")
        if s.isdigit():
            ms = int(s)
        else:
            try:
                dt = datetime.fromisoformat(s)
            except ValueError:
                raise TimeError(f"not ISO-8601: {s[:40]!r}") from None
            if dt.tzinfo is None:
                raise TimeError(f"time has no UTC offset or Z: {s[:40]!r}")
            ms = _epoch_ms(dt)
    elif isinstance(value, bool) or value is None:
        raise TimeError(f"not a time: {value!r}")
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if value != value:  # NaN
            raise TimeError("not a time: NaN")
        ms = int(value)
    else:
        raise TimeError(f"not a time: {type(value).__name__}")
    if not MIN_TS <= ms <= MAX_TS:
        raise TimeError(f"time out of range: {ms}")
    return ms


_MINUTES: dict[int, str] = {}  # minute since the epoch -> "YYYY-MM-DDTHH:MM:" (formatted once)
_SECONDS = [f"{i:02d}" for i in range(60)]
_FRACTIONS = ["Z"] + [f".{i:03d}Z" for i in range(1, 1000)]  # the millisecond and the Z, formatted once


def format_time(ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC (``2026-03-01T10:30:00Z``; four-digit years)."""
    s, frac = divmod(ms, 1000)
    if 0 <= s < 253402300800:  # years 1970 to 9999: strftime's %Y has four digits
        minute, sec = divmod(s, 60)
        head = _MINUTES.get(minute)
        if head is None:
            if len(_MINUTES) >= 65536:
                _MINUTES.clear()  # bounded; the usual input moves forward in time
            head = _MINUTES[minute] = _time.strftime("%Y-%m-%dT%H:%M:", _time.gmtime(minute * 60))
        return head + _SECONDS[sec] + _FRACTIONS[frac]
    t = EPOCH + timedelta(milliseconds=ms)  # before 1970 (a customer-local day of 1970-01-01)
    out = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return out + (f".{frac:03d}Z" if frac else "Z")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 1, "s": MS_SECOND, "m": MS_MINUTE, "h": MS_HOUR, "d": MS_DAY, "w": MS_WEEK}


def parse_duration(value) -> int:
    """Parse ``"30m"``, ``"1h30m"``, ``"7d"``, ``"250ms"`` (or a number of seconds) to ms."""
    if isinstance(value, bool):
        raise TimeError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise TimeError(f"negative duration: {value!r}")
        return int(value * MS_SECOND)
    if not isinstance(value, str):
        raise TimeError(f"not a duration: {value!r}")
    s = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise TimeError(f"not a duration: {value!r} (use e.g. 30m, 1h, 12h, 7d, 10s)")
    return int(total)


def format_duration(ms: int) -> str:
    for unit, size in (("d", MS_DAY), ("h", MS_HOUR), ("m", MS_MINUTE), ("s", MS_SECOND)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_clock(value: str) -> int:
    """Parse a local wall-clock time ``"21:00"`` to minutes after midnight."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(value).strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise TimeError(f"not a clock time: {value!r} (use HH:MM, e.g. 21:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


@lru_cache(maxsize=1024)
def zone(name: str | None) -> ZoneInfo | timezone:
    """The time zone for an IANA name (UTC when None). Raises TimeError if unknown."""
    if not name or name in ("UTC", "Etc/UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise TimeError(f"unknown time zone: {name!r}") from None


def local(ms: int, tz) -> datetime:
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


_NAIVE_EPOCH = datetime(1970, 1, 1)
_SPAN = MS_HOUR  # an hour whose offset differs at its two ends is computed exactly, every time
_OFFSETS: dict[tuple, int | None] = {}  # (zone, UTC hour) -> UTC offset in ms, None if it changes inside


def _offset_ms(ms: int, tz) -> int:
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(tz).utcoffset() // _MS


def local_ms(ms: int, tz) -> int:
    """The customer-local wall time of ``ms`` in ``tz`` as milliseconds since a naive 1970-01-01T00:00
    (the fields of ``wall(ms, tz)`` as a number: minute of the day, hour, weekday by arithmetic)."""
    if tz is UTC:
        return ms
    q = ms // _SPAN
    off = _OFFSETS.get((tz, q), False)
    if off is False:
        wall(ms, tz)  # fills the cache for this hour
        off = _OFFSETS[(tz, q)]
    if off is None:
        return (local(ms, tz).replace(tzinfo=None) - _NAIVE_EPOCH) // _MS
    return ms + off


def local_date(ms: int, tz) -> date:
    """The customer-local calendar day of ``ms`` (``wall(ms, tz).date()``)."""
    return date.fromordinal(local_ms(ms, tz) // MS_DAY + _ORDINAL_1970)


_ORDINAL_1970 = date(1970, 1, 1).toordinal()


def minute_of_day(ms: int, tz) -> int:
    """Customer-local minutes after midnight of ``ms`` (``wall``'s hour * 60 + minute)."""
    return (local_ms(ms, tz) // MS_MINUTE) % 1440


def wall(ms: int, tz) -> datetime:
    """The customer-local wall time of ``ms`` in ``tz`` as a naive datetime: the same
    fields as ``local(ms, tz)``, from an offset looked up once per zone and UTC hour
    (an hour whose offset changes inside it is computed exactly every time)."""
    if tz is UTC:
        return _NAIVE_EPOCH + timedelta(milliseconds=ms)
    q = ms // _SPAN
    key = (tz, q)
    off = _OFFSETS.get(key, False)
    if off is False:
        start = q * _SPAN
        a, b = _offset_ms(start, tz), _offset_ms(start + _SPAN - 1, tz)
        off = a if a == b else None
        if len(_OFFSETS) >= 65536:
            _OFFSETS.clear()  # bounded
        _OFFSETS[key] = off
    if off is None:
        return local(ms, tz).replace(tzinfo=None)
    return _NAIVE_EPOCH + timedelta(milliseconds=ms + off)


def to_ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


@lru_cache(maxsize=65536)
def at_local(day: date, minutes: int, tz) -> int:
    """Epoch ms of wall-clock ``minutes`` after midnight on ``day`` in ``tz``.

    A wall time that does not exist (skipped by a daylight-saving change) maps
    to the same offset as before the change, i.e. a little later in real time.
    (Memoized: the same days, times and zones recur for every customer.)
    """
    dt = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=tz)
    return to_ms(dt)


def month_index(ms: int, tz) -> int:
    d = wall(ms, tz)
    return d.year * 12 + (d.month - 1)


def yearly_date(year: int, month: int, day: int) -> date:
    """``month``/``day`` in ``year``; 29 February falls on 28 February in other years."""
    if month == 2 and day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return date(year, month, day)


def next_yearly(after_ms: int, month: int, day: int, minutes: int, tz, strictly_after=True) -> tuple[int, int]:
    """The first ``month``/``day`` at local ``minutes`` after ``after_ms``.

    Returns ``(due_ms, year)``.
    """
    year = wall(after_ms, tz).year
    for y in (year - 1, year, year + 1, year + 2):
        due = at_local(yearly_date(y, month, day), minutes, tz)
        if due > after_ms or (not strictly_after and due == after_ms):
            return due, y
    raise AssertionError("unreachable")
