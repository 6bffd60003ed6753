"""Changing the rule file of running workers (issue 31, point 8), against a real broker: each worker
logs the fingerprint of its rules at start and exports it (journey_rules_info); two workers of one
group on different rule files each warn, naming the journeys only one runs, and set
journey_rules_mismatch to 1; a worker that loads saved state of journeys its rule file no longer has
says so; once the odd worker is gone, the mismatch clears."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import orjson
from conftest import need_tool
from live_support import Worker, produce_log, trigger_ids, wait_for

from journey.core.timeutil import parse_time
from journey.history.synth import write_log

EXAMPLE = Path(__file__).resolve().parents[1] / "journey" / "examples" / "journeys.example.toml"
ANNOUNCE = "1"   # JOURNEY_RULES_ANNOUNCE: seconds between announcements (a worker is forgotten after 3)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str) -> dict[str, float]:
    """label text -> value of one metric family's samples."""
    return {m.group(1) or "": float(m.group(2))
            for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


def fingerprint(path) -> str:
    p = subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(path)], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    (fp,) = re.findall(r"^fingerprint ([0-9a-f]{12}) ", p.stdout, re.M)
    return fp


def test_two_workers_on_different_rule_files_warn_and_a_removed_journey_is_logged(broker, tmp_path):
    old = tmp_path / "old.toml"
    old.write_text(EXAMPLE.read_text())
    # the new file drops two journeys and changes nothing else: in YAML, to show the fingerprint is of the
    # rules, not of the file
    import yaml

    data = tomllib.loads(EXAMPLE.read_text())
    del data["journeys"]["post_purchase"], data["journeys"]["review_thanks"]
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(data, sort_keys=False))
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(tomllib.loads(EXAMPLE.read_text()), sort_keys=False))
    fp_old, fp_new = fingerprint(old), fingerprint(new)
    assert fp_old != fp_new and fingerprint(same) == fp_old

    env = {"JOURNEY_RULES_ANNOUNCE": ANNOUNCE}
    a = Worker(broker, tmp_path, name="a", rules=str(old), extra_env=env)
    b = None
    try:
        a.wait_ready()
        # the old rules run a while: post-purchase series open (waiting for their deliveries)
        log = tmp_path / "log.jsonl"
        write_log(str(log), customers=150, events=3000, seed=3)
        produce_log(broker, log, until=parse_time("2026-07-01T00:00:00Z"))
        wait_for(lambda: len(trigger_ids(broker, idle_ms=200)) > 50, 90, "triggers of the old rules")
        wait_for(lambda: all(not d["behind"] and not d["waiting"] for d in a.wait_ready()["detail"].values()),
                 60, "the log to be read", every=0.5)
        m = metrics(a.port)
        assert sample(m, "journey_rules_info") == {f'{{fingerprint="{fp_old}"}}': 1.0}, m
        assert sample(m, "journey_rules_mismatch") == {"": 0.0}
        assert f"fingerprint {fp_old}: 13 built-in rule(s) enabled, 7 journey(s)" in a.log.read_text()

        # a second worker of the group, started with the new file: a rollout half done
        b = Worker(broker, tmp_path, name="b", rules=str(new), extra_env=env)
        b.wait_ready()
        assert f"fingerprint {fp_new}: 13 built-in rule(s) enabled, 5 journey(s)" in b.log.read_text()

        def warned(w, mine, theirs):
            text = w.log.read_text()
            return ("rules differ between the workers of this group: this worker" in text
                    and f"runs rules {mine} " in text and f"runs {theirs} (version " in text)

        wait_for(lambda: warned(a, fp_old, fp_new) and warned(b, fp_new, fp_old), 60, "both workers to warn")
        assert "journeys only this one runs: post_purchase, review_thanks" in a.log.read_text()
        assert "journeys only that one runs: post_purchase, review_thanks" in b.log.read_text()
        for w, fp in ((a, fp_old), (b, fp_new)):
            m = metrics(w.port)
            assert sample(m, "journey_rules_info") == {f'{{fingerprint="{fp}"}}': 1.0}, m
            assert sample(m, "journey_rules_mismatch") == {"": 1.0}, m
            assert sample(m, "journey_rules_workers") == {f'{{fingerprint="{fp_old}"}}': 1.0,
                                                          f'{{fingerprint="{fp_new}"}}': 1.0}, m
            assert 'journey_control_records_deadlettered_total{kind="rules"} 0.0' in m
            lint = subprocess.run([need_tool("promtool"), "check", "metrics"], input=m.encode(), capture_output=True)
            assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
        # the new worker loaded saved state of journeys its file does not have, and says so
        text = b.log.read_text()
        assert "holds rules or journeys this rule file" in text and f"fingerprint {fp_new}" in text, text[-3000:]
        assert re.search(r"post_purchase \(a journey not in the rule file: [1-9]\d* customer\(s\)", text), text[-3000:]

        # the old worker goes: the new one takes every partition, and soon hears no other rules
        assert a.stop() == 0
        wait_for(lambda: len(b.wait_ready()["partitions"]) == 6, 60, "the new worker to hold every partition")
        wait_for(lambda: sample(metrics(b.port), "journey_rules_mismatch") == {"": 0.0}, 30,
                 "the mismatch to clear", every=0.5)
        assert "the workers heard from run the same rules again" in b.log.read_text()
        assert sample(metrics(b.port), "journey_rules_workers") == {f'{{fingerprint="{fp_new}"}}': 1.0}
    finally:
        a.stop()
        if b is not None:
            assert b.stop() == 0, b.log.read_text()[-3000:]


def test_state_of_a_removed_journey_is_found_with_what_is_pending(tmp_path):
    """Engine.not_run (what the worker's start log line reports): customers with state of a journey the
    configuration no longer runs, and their pending timers, deferred triggers and open exposures."""
    from journey.core.engine import Engine
    from journey.history.replay import replay
    from journey.io.rulefile import config_from, load_config

    log = tmp_path / "log.jsonl"
    write_log(str(log), customers=150, events=3000, seed=3)
    keep = []
    # the state at the end of the log: post-purchase series of the last orders still open
    replay([str(log)], str(tmp_path / "t.jsonl"), config=load_config(EXAMPLE), keep_engine=keep)
    assert Engine(load_config(EXAMPLE), states=keep[0].states).not_run() == {}
    data = tomllib.loads(EXAMPLE.read_text())
    del data["journeys"]["post_purchase"]
    gone = Engine(config_from(data), states=keep[0].states).not_run()
    assert set(gone) == {"post_purchase"} and gone["post_purchase"][0] > 0 and gone["post_purchase"][1] > 0, gone


def test_announcements_from_outside_are_bounded():
    """A rules announcement is read from journey.internal, so from outside this process: what the
    warning shows is kept only when small, and a flood of made-up workers is refused (dead-lettered
    by the runtime) once a group's worth is heard from."""
    import pytest

    from journey.core.config import Config
    from journey.live.rulesync import MAX_PEERS, RuleSync

    r = RuleSync(Config(), "me")
    r.heard(orjson.dumps({"worker": "w0", "fingerprint": "abc", "version": "x" * 100, "journeys": ["a" * 1000]}))
    assert r.peers["w0"][2] == {"version": "?"} and r.mismatch
    for i in range(1, MAX_PEERS):
        r.heard(orjson.dumps({"worker": f"w{i}", "fingerprint": r.fingerprint, "rules": ["x"]}))
    with pytest.raises(ValueError):
        r.heard(orjson.dumps({"worker": "one-too-many", "fingerprint": r.fingerprint}))
    assert len(r.peers) == MAX_PEERS and r.workers()[r.fingerprint] == MAX_PEERS
    with pytest.raises(ValueError):
        r.heard(b'{"worker": 1, "fingerprint": "abc"}')
