"""``journey bench`` (issue 17, item 4): one run prints the bare parse, the replay, the ratio with
its verdict, state per customer, the core's mode, and 1 against 2 workers with their verdict and
whether the outputs agree; ``--log`` takes a log of the user's. Figures are not asserted (speed is
not tested by time), only that each is measured and judged."""

from __future__ import annotations

import re
import subprocess
import sys


def bench(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "journey", "bench", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bench_measures_and_judges_each_figure():
    out = bench("--customers", "300", "--events", "6000", "--worker-pairs", "1")
    assert re.search(r"bare orjson parse +[\d,]+ lines/s", out), out
    assert re.search(r"replay / bare parse +[\d.]+x slower \(target: within 12x: (met|missed)\)", out), out
    assert re.search(r"state per customer +mean \d+ B.*\(target: mean under 1 KB: (met|missed)\)", out), out
    assert "size run               300 customers, 6,000 events, seed 7, with engagement" in out
    assert re.search(r"\d+ lines, [\d,]+ of them answers to messages", out), out
    assert re.search(r"rules +\S+journeys\.example\.toml", out), out
    assert re.search(r"core +(compiled with Cython|pure Python)", out), out
    assert re.search(r"2 workers / 1 worker +[\d.]+x .*at least 1.6x: (met|missed)\); outputs byte-identical: yes", out), out


def test_bench_with_the_built_in_rules_alone_and_a_wrong_rule_file(tmp_path):
    out = bench("--customers", "200", "--events", "3000", "--worker-pairs", "0", "--rules", "builtin",
                "--no-engagement")
    assert "rules                  the built-in rules only" in out and "answers to messages" not in out, out
    r = subprocess.run([sys.executable, "-m", "journey", "bench", "--rules", str(tmp_path / "x.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_bench_on_a_log_of_ones_own(cdnow):
    out = bench("--log", str(cdnow[0]), "--worker-pairs", "0")
    assert f"size run               {cdnow[0]}: 6,919 lines" in out, out
    assert re.search(r"replay / bare parse +[\d.]+x slower \(target: within 15x: (met|missed)\)", out), out
    assert re.search(r"triggers +[\d,]+", out) and "2 workers" not in out


def test_bench_on_a_missing_log_says_what_to_do(tmp_path):
    r = subprocess.run([sys.executable, "-m", "journey", "bench", "--log", str(tmp_path / "nope.jsonl")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("journey bench: --log ") and "no such file" in r.stderr
    assert "Traceback" not in r.stderr
