"""Do the workers of one group run the same rules?

Each worker announces the fingerprint of its rule configuration (``Config.fingerprint``:
SHA-256 of every setting in force, 12 hex digits) in a small control record on every
partition of ``journey.internal`` (header ``journey-control: rules``; value
``{"worker", "fingerprint", "version", "rules", "journeys"}``, no customer data): when
it is given partitions (so after every rebalance, when a worker joins or leaves) and
every ``ANNOUNCE_S`` seconds. Whoever holds a partition reads it there, as it reads the
other control records, so every worker that holds a partition hears every other. A
worker not heard from for ``3 * ANNOUNCE_S`` is forgotten (it stopped, or restarted
under a new id).

A worker that hears another run a different fingerprint logs a warning once per (worker,
fingerprint), naming the journeys and rules only one side runs, and sets
``journey_rules_mismatch`` to 1 until every worker heard from runs its own again (then it
logs that too). ``journey_rules_workers{fingerprint}`` counts the workers heard from by
fingerprint, this one included: a rollout is done when one fingerprint has them all.

Workers of a version before this one dead-letter these records as unknown control
records (``journey_control_records_deadlettered_total{kind="unknown"}``) while a rollout
mixes versions; nothing else comes of it."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter

import orjson

from .. import __version__

log = logging.getLogger("journey.worker")

RULES_KIND = b"rules"
MAX_PEERS = 256   # workers of one group heard from at a time (more is not a group: the rest is dead-lettered)


def announce_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("JOURNEY_RULES_ANNOUNCE", "30")))
    except ValueError:
        return 30.0


class RuleSync:
    def __init__(self, config, worker_id: str | None = None):
        self.fingerprint = config.fingerprint()
        self.source = config.source
        self.journeys = sorted(config.journeys)
        self.rules = sorted(n for n, p in config.rules.items() if p.enabled)
        self.me = worker_id or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self.every = announce_seconds()
        self.next_announce = float("inf")   # the first announcement is at the first assignment
        self.peers: dict[str, tuple[str, float, dict]] = {}   # worker -> (fingerprint, last heard, record)
        self.warned: set[tuple[str, str]] = set()
        self.mismatch = False

    def announcement(self) -> bytes:
        self.next_announce = time.monotonic() + self.every
        return orjson.dumps({"worker": self.me, "fingerprint": self.fingerprint, "version": __version__,
                             "rules": self.rules, "journeys": self.journeys})

    def due(self) -> bool:
        return time.monotonic() >= self.next_announce

    def heard(self, value: bytes) -> None:
        """A ``rules`` control record (ValueError if it is not one: it is dead-lettered)."""
        d = orjson.loads(value)
        if not (isinstance(d, dict) and type(d.get("worker")) is str and type(d.get("fingerprint")) is str
                and len(d["worker"]) <= 200 and len(d["fingerprint"]) <= 64):
            raise ValueError("not a rules announcement")
        if d["worker"] == self.me:
            return
        if d["worker"] not in self.peers and len(self.peers) >= MAX_PEERS:
            raise ValueError("more workers announced than a group has")   # dead-lettered, nothing kept
        # only what the warning shows is kept, bounded (the record comes from outside this process)
        v = d.get("version")
        kept = {"version": v if type(v) is str and len(v) <= 32 else "?"}
        for what in ("journeys", "rules"):
            names = d.get(what)
            if isinstance(names, list) and len(names) <= 500 and all(
                    type(n) is str and len(n) <= 100 for n in names):
                kept[what] = names
        self.peers[d["worker"]] = (d["fingerprint"], time.monotonic(), kept)
        self.check()

    def check(self) -> None:
        """Forget workers not heard from lately; warn of a worker on other rules (once per worker
        and fingerprint); say when all agree again."""
        now = time.monotonic()
        for w in [w for w, (_f, at, _d) in self.peers.items() if now - at > 3 * self.every]:
            del self.peers[w]
        others = {w: (f, d) for w, (f, _at, d) in self.peers.items() if f != self.fingerprint}
        if len(self.warned) > 4 * MAX_PEERS:
            self.warned.clear()   # bounded: a worker still on other rules is named again, once
        for w, (f, d) in sorted(others.items()):
            if (w, f) in self.warned:
                continue
            self.warned.add((w, f))
            lines = []
            for what, mine in (("journeys", self.journeys), ("rules", self.rules)):
                theirs = d.get(what)
                if isinstance(theirs, list):
                    here = sorted(set(mine) - set(theirs))
                    there = sorted(set(map(str, theirs)) - set(mine))
                    if here:
                        lines.append(f"{what} only this one runs: {', '.join(here)}")
                    if there:
                        lines.append(f"{what} only that one runs: {', '.join(there)}")
            log.warning("rules differ between the workers of this group: this worker (%s) runs rules %s (%s), "
                        "worker %s runs %s (version %s)%s. Finish the rollout of one rule file to every "
                        "worker (journey_rules_mismatch is 1 meanwhile)", self.me, self.fingerprint, self.source,
                        w, f, d.get("version", "?"), "; " + "; ".join(lines) if lines else "")
        if self.mismatch and not others:
            log.warning("the workers heard from run the same rules again (%s)", self.fingerprint)
        self.mismatch = bool(others)

    def workers(self) -> Counter:
        """Fingerprint -> workers heard from lately, this one included."""
        c = Counter(f for f, _at, _d in self.peers.values())
        c[self.fingerprint] += 1
        return c
