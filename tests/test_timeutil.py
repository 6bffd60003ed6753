"""The fast paths of ``core.timeutil`` (formatting by cached minute, local wall time by
cached zone offset, memoized local times) against the direct computations they replace."""

import random
import time
from datetime import datetime

import pytest

from journey.core.timeutil import MS_MINUTE, at_local, format_time, local, parse_time, wall, zone

ZONES = ["UTC", "Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles", "Australia/Adelaide",
         "Australia/Lord_Howe", "Asia/Kolkata", "Asia/Kathmandu", "Africa/Monrovia", "America/St_Johns",
         "Pacific/Chatham", "Pacific/Apia", "Asia/Tokyo"]


def _format_reference(ms: int) -> str:
    s, frac = divmod(ms, 1000)
    if frac:
        return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(s)) + f"{frac:03d}Z"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))


def test_format_time_matches_strftime():
    r = random.Random(11)
    for i in range(100_000):
        ms = r.randrange(0, 7258118400000)
        if i % 2:
            ms -= ms % 1000  # whole seconds: no fraction
        assert format_time(ms) == _format_reference(ms), ms
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert parse_time(format_time(1780000000123)) == 1780000000123


@pytest.mark.parametrize("name", ZONES)
def test_wall_matches_local_across_offset_changes(name):
    """Every 7 minutes through the years with a daylight-saving change (both ways), and
    Monrovia's offset of -0:44:30 up to 1972, which is not on a quarter hour."""
    tz = zone(name)
    spans = [(datetime(1970, 1, 1), datetime(1972, 6, 1)), (datetime(2025, 1, 1), datetime(2027, 1, 1))]
    for a, b in spans:
        ms = int(a.timestamp() * 1000) if a.year > 1970 else 0
        end = int(b.timestamp() * 1000)
        while ms < end:
            assert wall(ms, tz) == local(ms, tz).replace(tzinfo=None), (name, ms)
            ms += 7 * MS_MINUTE + 1111


def test_at_local_memoized_is_the_same_computation():
    tz = zone("Europe/Berlin")
    day = datetime(2026, 3, 29).date()  # 02:30 does not exist there that day
    first = at_local(day, 150, tz)
    assert at_local(day, 150, tz) == first == at_local.__wrapped__(day, 150, tz)
    assert format_time(first) == "2026-03-29T01:30:00Z"  # the offset before the change
