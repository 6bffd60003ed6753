"""CLV: the published CDNOW results, stream against batch, and win_back on event time.

The CDNOW 2,357-customer sample ships inside the ``lifetimes`` package; only
its data file is read (none of lifetimes' model code is used)."""

import csv
import io
import math
import subprocess
import sys

import orjson
import pytest
from conftest import CAL_END, T, ev

from journey.core.clv import Model, summary
from journey.core.engine import Engine, ListSink
from journey.core.timeline import drive
from journey.core.timeutil import MS_DAY, MS_WEEK, format_time, parse_time
from journey.io.logs import Reader
from journey.io.rulefile import config_from


@pytest.fixture(scope="module")
def model_file(cdnow, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.json"
    r = subprocess.run([sys.executable, "-m", "journey", "clv", "fit", str(cdnow[0]), "--calibration-end", CAL_END,
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_fit_reproduces_fader_hardie_lee(model_file):
    d = orjson.loads(model_file.read_bytes())
    bg, gg, diag = d["bgnbd"], d["gamma_gamma"], d["diagnostics"]
    assert (round(bg["r"], 3), round(bg["alpha"], 3), round(bg["a"], 3), round(bg["b"], 3)) == (0.243, 4.414, 0.793, 2.426)
    assert round(diag["bgnbd_loglik"], 1) == -9582.4
    assert diag["customers"] == 2357 and diag["bgnbd_converged"]
    assert diag["gamma_gamma_customers"] == 946
    assert (round(gg["p"], 2), round(gg["q"], 2), round(gg["v"], 2)) == (6.25, 3.74, 15.44)


def test_conditional_expectation_of_the_published_customer(model_file):
    m = Model.from_dict(orjson.loads(model_file.read_bytes()))
    assert round(m.expected_purchases(39, 2, 30.43, 38.86), 3) == 1.226


def test_p_alive_from_the_stream_equals_batch(cdnow, model_file, tmp_path):
    # batch: journey clv score
    r = subprocess.run([sys.executable, "-m", "journey", "clv", "score", str(cdnow[0]), "--model", str(model_file),
                        "--at", CAL_END], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    batch = {row["customer_id"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
    assert len(batch) == 2357
    # stream: replay the calibration period with the model configured, up to the calibration end
    cfg = config_from({"clv": {"model": str(model_file)}})
    eng = Engine(cfg, ListSink())
    end = parse_time(CAL_END + "T00:00:00Z")
    drive(eng, Reader([cdnow[1]]).events(), end)
    assert len(eng.states) == 2357
    m = Model.from_dict(orjson.loads(model_file.read_bytes()))
    worst = 0.0
    for cid, st in eng.states.items():
        x, t_x, T_, _m = summary(st.clv, end)
        row = batch[cid]
        assert (x, round(t_x, 4), round(T_, 4)) == (int(row["x"]), float(row["t_x"]), float(row["T"]))
        # both against the closed form written in this file, not against each other's code
        want = p_alive_closed_form(m, x, t_x, T_)
        worst = max(worst, abs(eng.clv.p_alive(st, end) - want), abs(float(row["p_alive"]) - want))
    assert worst < 1e-6


# -- win_back and stages in the stream --------------------------------------------------

PARAMS = Model(0.243, 4.414, 0.793, 2.426, 6.25, 3.74, 15.44)


@pytest.fixture
def clv_rules(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(orjson.dumps(PARAMS.to_dict()))
    # quiet hours off, so the trigger time is exactly the crossing time
    return {"clv": {"model": str(path)}, "policy": {"quiet_start": "00:00", "quiet_end": "00:00"}}


def orders_at(days, cid="c1", start="2026-01-05T00:00:00Z", revenue=80):
    t0 = T(start)
    return [ev("order.completed", cid, t0 + d * MS_DAY, order_id=f"o{d}", revenue=revenue) for d in days]


def p_alive_closed_form(m, x, t_x, T):
    """BG/NBD P(alive | x, t_x, T) (Fader, Hardie and Lee 2005, "Counting your customers the easy
    way", eq. 13), written out here so the tests do not check the product against itself."""
    if x == 0:
        return 1.0
    return 1.0 / (1.0 + m.a / (m.b + x - 1) * ((m.alpha + T) / (m.alpha + t_x)) ** (m.r + x))


def expected_crossing(first_day_ms, x, t_x_weeks, threshold=0.3):
    """The first millisecond after the T at which the closed form reaches ``threshold`` (solving
    eq. 13 for T), counted from the first purchase day."""
    m = PARAMS
    Tstar = (m.alpha + t_x_weeks) * ((1 / threshold - 1) * (m.b + x - 1) / m.a) ** (1 / (m.r + x)) - m.alpha
    due = first_day_ms + math.ceil(Tstar * MS_WEEK) + 1
    weeks = (due - first_day_ms) / MS_WEEK
    assert p_alive_closed_form(m, x, t_x_weeks, weeks) < threshold <= p_alive_closed_form(
        m, x, t_x_weeks, weeks - 2 / MS_WEEK)
    return due


def test_win_back_fires_when_p_alive_crosses_0_3(run, clv_rules):
    r = run(orders_at([0, 14, 28]), rules=clv_rules, until="2028-01-01T00:00:00Z")
    (t,) = r.of("win_back")
    due = expected_crossing(T("2026-01-05T00:00:00Z"), 2, 4.0)
    assert t["time"] == format_time(due)
    assert 0.299 <= t["data"]["details"]["p_alive"] <= 0.3   # just below 0.3, rounded to 4 places
    assert t["data"]["relationship"]["stage"] == "at_risk"   # 0.2 <= P(alive) < 0.5
    assert {"p_alive", "expected_purchases", "clv"} <= t["data"]["relationship"].keys()


def test_win_back_not_if_they_buy_again_before(run, clv_rules):
    due = expected_crossing(T("2026-01-05T00:00:00Z"), 2, 4.0)
    days_before = (due - T("2026-01-05T00:00:00Z")) // MS_DAY - 1
    r = run(orders_at([0, 14, 28, days_before]), rules=clv_rules, until=format_time(due + MS_DAY))
    assert r.of("win_back") == []


def test_win_back_needs_two_orders_a_model_and_value(run, clv_rules):
    assert run(orders_at([0]), rules=clv_rules, until="2028-01-01T00:00:00Z").of("win_back") == []
    assert run(orders_at([0, 14, 28]), until="2028-01-01T00:00:00Z").of("win_back") == []   # no model
    floor = {**clv_rules, "rules": {"win_back": {"value_floor": 1e9}}}
    assert run(orders_at([0, 14, 28]), rules=floor, until="2028-01-01T00:00:00Z").of("win_back") == []


def test_stages_follow_p_alive(run, clv_rules):
    r = run(orders_at([0, 14, 28]), rules=clv_rules, until="2028-01-01T00:00:00Z")
    moves = [(t["from"], t["to"]) for t in r.transitions]
    assert moves == [("prospect", "new"), ("new", "active"), ("active", "at_risk"), ("at_risk", "lapsed")]
    at_risk = next(t for t in r.transitions if t["to"] == "at_risk")
    assert at_risk["time"] == format_time(expected_crossing(T("2026-01-05T00:00:00Z"), 2, 4.0, 0.5))


def test_bad_model_path_is_a_clear_config_error(tmp_path):
    from journey.core.config import ConfigError

    with pytest.raises(ConfigError) as e:
        config_from({"clv": {"model": str(tmp_path / "missing.json")}})
    assert "journey clv fit" in str(e.value)


def test_batch_statistics_share_the_streams_dedup_stitching_and_erasure(tmp_path):
    from journey.history.clvfit import stats_from_log

    day = "2026-01-0{}T10:00:00Z"
    recs = [ev("order.completed", "c1", day.format(1), id="a", order_id="o1", revenue=10),
            ev("order.completed", "c1", day.format(1), id="a", order_id="o1", revenue=10),     # redelivered
            ev("order.completed", "c1", day.format(3), id="b", order_id="o2", revenue=20),
            ev("order.completed", "c1", day.format(4), id="c", order_id="o2", revenue=20),     # same order again
            ev("order.completed", "c2", day.format(1), order_id="x1", revenue=10),
            ev("order.completed", "c2", day.format(2), order_id="x2", revenue=10),
            ev("customer.erased", "c2", day.format(5)),
            {"id": "g", "anonymous_id": "a9", "type": "order.completed", "ts": day.format(2),
             "props": {"order_id": "g1", "revenue": 5}},
            {"type": "identify", "userId": "c3", "anonymousId": "a9", "messageId": "l",
             "timestamp": day.format(3), "traits": {}}]
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    stats = stats_from_log([log], T("2026-01-09T00:00:00Z"))
    first = T(day.format(1)) // MS_DAY
    assert stats == {"c1": [first, first + 2, 1, 2000], "c3": [first + 1, first + 1, 0, 0]}


def test_the_generated_population_fits_and_its_spend_shape_is_recovered(tmp_path):
    """`journey generate` draws each customer's visit rate (gamma), chance to stop after a purchase
    (beta) and spend level, and each order from a gamma of shape 4 around that level: the models
    converge on it, and Gamma-Gamma's p (the shape per order) comes back near 4."""
    log, model = tmp_path / "history.jsonl.gz", tmp_path / "model.json"
    r = subprocess.run([sys.executable, "-m", "journey", "generate", "--customers", "2000", "--events", "100000",
                        "--days", "540", "--out", str(log)], capture_output=True, text=True)
    assert r.returncode == 0 and "100,000 events of 2,000 customers" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "journey", "clv", "fit", str(log), "--calibration-end", "2026-12-31",
                        "--out", str(model)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = Model.from_dict(orjson.loads(model.read_bytes()))
    assert m.problems() == [] and m.diagnostics["repeat_customers"] > 500
    assert 3.0 < m.p < 5.5, m.p
    assert 0 < m.a / (m.a + m.b) < 0.5  # a mean chance to stop after a purchase well inside (0, 1)
    r = subprocess.run([sys.executable, "-m", "journey", "clv", "score", str(log), "--model", str(model),
                        "--at", "2027-06-30", "--out", str(tmp_path / "scores.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "scores.csv").read_text())))
    alive = [float(row["p_alive"]) for row in rows]
    assert len(rows) > 1500 and min(alive) < 0.2 and max(alive) > 0.9  # some have stopped, some have not


def test_a_fit_the_data_cannot_support_is_refused_and_such_a_model_file_too(tmp_path):
    from journey.core.config import ConfigError

    log = tmp_path / "g.jsonl"
    with open(log, "wb") as f:  # everyone buys twice and spends alike: Gamma-Gamma is not identified
        for n in range(300):
            for k, day in enumerate((n % 20 + 1, n % 20 + 15)):
                f.write(orjson.dumps(ev("order.completed", cid=f"c{n}", ts=f"2026-01-{day:02d}T12:00:00Z",
                                        id=f"o{n}-{k}", order_id=f"o{n}-{k}", revenue=50.0)) + b"\n")
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "journey", "clv", "fit", str(log), "--calibration-end", "2026-04-01",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and "refused" in r.stderr and "repeat purchases" in r.stderr, r.stderr
    assert not out.exists()
    # a degenerate model file written elsewhere is refused by the rule file that names it
    bad = Model(0.2, 4.0, 2.5e6, 6.8e6, diagnostics={"bgnbd_converged": False})
    out.write_bytes(orjson.dumps(bad.to_dict()))
    with pytest.raises(ConfigError) as e:
        config_from({"clv": {"model": str(out)}})
    assert "refused" in str(e.value) and "did not converge" in str(e.value)
    r = subprocess.run([sys.executable, "-m", "journey", "clv", "fit", str(log), "--calibration-end", "2026-13-01",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("journey clv fit: --calibration-end '2026-13-01' is not a date")
