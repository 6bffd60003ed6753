"""``journey experiments report``: Wilson and Newcombe intervals against published worked
examples, the report's rows on a hand-computed case, and the command line."""

from __future__ import annotations

import gzip
import subprocess
import sys

import orjson
import pytest

from journey.core.uplift import Tally, newcombe, summary_lines, wilson


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat Med 17:857,
# Table I, method 3 (score, no continuity correction)
@pytest.mark.parametrize("x,n,low,high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                          (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_newcombe_1998(x, n, low, high):
    lo, hi = wilson(x, n)
    assert round(lo, 4) == low and round(hi, 4) == high


# Newcombe (1998), "Interval estimation for the difference between independent proportions",
# Stat Med 17:873, Table II, method 10 (hybrid score, no continuity correction)
@pytest.mark.parametrize("x1,n1,x2,n2,low,high", [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090),
                                                  (6, 7, 2, 7, 0.0582, 0.8062), (5, 56, 0, 29, -0.0381, 0.1926),
                                                  (0, 10, 0, 20, -0.1611, 0.2775),
                                                  (10, 10, 0, 20, 0.6791, 1.0000)])
def test_newcombe_matches_newcombe_1998(x1, n1, x2, n2, low, high):
    d, lo, hi = newcombe(x1, n1, x2, n2)
    assert d == pytest.approx(x1 / n1 - x2 / n2)
    assert round(lo, 4) == low and round(hi, 4) == high


def outcome(rule, arm, stage, converted, value=0.0, health=60):
    return {"trigger_id": "t", "customer_id": "c", "rule": rule, "variant": arm, "stage": stage, "health": health,
            "exposed_at": "2026-03-01T00:00:00Z", "converted": converted,
            "converted_at": "2026-03-02T00:00:00Z" if converted else None, "value": value,
            "time": "2026-03-04T00:00:00Z"}


def hand_case():
    """cart_abandoned: holdout 48/80 (all active); discount 56/70 (40 active with 36 conversions
    worth 10.0 each, 30 lapsed with 20 worth 5.0); the holdout has no lapsed customer."""
    recs = [outcome("cart_abandoned", "holdout", "active", i < 48) for i in range(80)]
    recs += [outcome("cart_abandoned", "discount", "active", i < 36, 10.0 if i < 36 else 0) for i in range(40)]
    recs += [outcome("cart_abandoned", "discount", "lapsed", i < 20, 5.0 if i < 20 else 0, health=20)
             for i in range(30)]
    return recs


def test_rows_on_a_hand_computed_case():
    t = Tally()
    for r in hand_case():
        t.add(r)
    rows = {(r["arm"], r["stage"]): r for r in t.rows()}
    assert set(rows) == {("holdout", None), ("discount", None), ("holdout", "active"), ("discount", "active"),
                         ("discount", "lapsed")}
    h, d = rows[("holdout", None)], rows[("discount", None)]
    assert (h["exposures"], h["conversions"], h["rate"]) == (80, 48, 0.6)
    assert h["uplift"] is None and h["ci_low"] is None and h["ci_high"] is None
    assert (d["exposures"], d["conversions"], d["rate"]) == (70, 56, 0.8)
    assert d["value_per_exposure"] == pytest.approx((36 * 10 + 20 * 5) / 70, abs=1e-4)
    assert d["uplift"] == pytest.approx(0.2) and round(d["ci_low"], 4) == 0.0524 and round(d["ci_high"], 4) == 0.3339
    a = rows[("discount", "active")]
    assert a["rate"] == 0.9 and a["uplift"] == pytest.approx(0.3)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(newcombe(36, 40, 48, 80)[1:])
    lapsed = rows[("discount", "lapsed")]
    assert lapsed["uplift"] is None and lapsed["ci_low"] is None  # no holdout in that stage
    assert list(rows)[0] == ("holdout", None)  # the holdout first, all stages before each stage
    bands = {(r["arm"], r.get("health_band")) for r in t.rows("health")}
    assert ("discount", "0-29") in bands and ("discount", "50-69") in bands


def test_plain_words_and_the_small_arm_warning():
    t = Tally()
    for r in hand_case():
        t.add(r)
    (line,) = summary_lines(t.rows())
    assert line == ("cart_abandoned, discount vs holdout: +20.0 points (95% CI +5.2 to +33.4), 150 exposures; "
                    "too few exposures to say anything yet (discount 70, holdout 80; fewer than 100)")
    (line,) = summary_lines(t.rows(), min_exposures=50)
    assert line.endswith("; it helps")


def test_bad_records_are_skipped_and_counted():
    t = Tally()
    assert not t.add({"rule": "x"}) and not t.add({**outcome("r", "a", "new", True), "variant": 3})
    assert t.add(outcome("r", "a", "new", True)) and t.bad == 2


def test_the_command_reads_plain_and_gz_files_and_writes_json(tmp_path):
    recs = hand_case()
    (tmp_path / "a.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs[:100]) + b"not json\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in recs[100:]))
    cmd = [sys.executable, "-m", "journey", "experiments", "report", str(tmp_path / "a.jsonl"),
           str(tmp_path / "b.jsonl.gz")]
    p = subprocess.run(cmd + ["--json"], capture_output=True, check=True)
    rows = orjson.loads(p.stdout)
    assert all(set(r) == {"rule", "arm", "stage", "exposures", "conversions", "rate", "value_per_exposure",
                          "uplift", "ci_low", "ci_high"} for r in rows)   # the contract's rows, exactly
    d = next(r for r in rows if r["arm"] == "discount" and r["stage"] is None)
    assert d["exposures"] == 70 and round(d["ci_low"], 4) == 0.0524
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "discount vs holdout: +20.0 points (95% CI +5.2 to +33.4)" in p.stdout and "warning" not in p.stderr
    assert "1 record(s) were not outcome records" in p.stdout
    p = subprocess.run([sys.executable, "-m", "journey", "experiments", "report"], capture_output=True, text=True)
    assert p.returncode == 2 and "--broker" in p.stderr
