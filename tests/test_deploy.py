"""deploy/: Prometheus configuration and alert rules, the Grafana dashboard, the
compose stack, and a real Prometheus scraping a real worker.

promtool and prometheus come from Debian's ``prometheus`` package (``.ci/run``
installs it). Outside CI a machine without it skips these tests; in CI a
missing promtool is a failure, not a skip.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import runpy
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import yaml
from conftest import need_tool
from live_support import Worker, produce_log, read_topic, stop_process, wait_for

from journey.history.synth import write_log
from journey.io import topics
from journey.live.broker import die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "journey.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RATE_INTERVAL = "30s"  # what Grafana puts for $__rate_interval at a 1 s scrape interval and a short range
RANGE = "10m"          # for $__range (the dashboard's time range): longer than the test runs

# a multi-step journey (domain.md section 8) the synthetic log walks through, beside the example rule
# file's journeys: its metrics, in the replay's file and the worker's, and the dashboard's Journeys row
STEPS_JOURNEY = """
[journeys.checkout_steps]
kind = "recovery"
entry = "checkout.started"
key = "checkout_id"
exit = "order.completed"
reenter = "7d"
steps = [
  { name = "settle", wait = "30m" },
  { name = "reminder", send = { offer = { type = "checkout_reminder" } } },
  { name = "back", wait_for = "product.viewed", within = "3d" },
  { name = "nudge", if = "customer.orders >= 1", send = { offer = { type = "checkout_nudge" } } },
]
"""
STEP_NAMES = ["settle", "reminder", "back", "nudge"]


def _rules_with_steps(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text((DEPLOY / "journeys.example.toml").read_text() + STEPS_JOURNEY)
    return path


_tool = need_tool


def promtool(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("promtool"), *args], input=stdin, capture_output=True, timeout=120)


def _ok(r: subprocess.CompletedProcess) -> str:
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 0, out
    return out


# -- static checks -------------------------------------------------------------------------------------------

def test_prometheus_config_and_rules_pass_promtool():
    _ok(promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")))
    out = _ok(promtool("check", "rules", str(ALERTS)))
    assert "SUCCESS" in out


def test_alert_rules_fire_when_they_should():
    """promtool's rule unit tests: each alert is silent until its condition has held for its `for`,
    then fires with the right labels and annotation text (alerts.test.yml)."""
    out = _ok(promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml")))
    assert "SUCCESS" in out
    tested = {t["alertname"] for case in yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())[
        "tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == set(_alert_names()), "every alert has a unit test in which it fires"


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def _alert_names() -> list[str]:
    return [r["alert"] for r in _rules() if "alert" in r]


def test_alerts_cover_what_operators_need():
    names = set(_alert_names())
    assert {"JourneyWorkerDown", "JourneyConsumerLagGrowing", "JourneyNoEvents", "JourneyDeadLetterRate",
            "JourneySuppressedShareSpike", "JourneyIntakeErrors", "JourneyIntakeKafkaDown"} <= names
    for r in _rules():
        if "alert" in r:
            assert r["labels"]["severity"] in ("warning", "critical")
            assert r["annotations"]["summary"] and r["annotations"]["description"]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def _queries(d: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(d) for t in p.get("targets", [])]


def test_dashboard_is_what_its_generator_writes():
    ns = runpy.run_path(str(DEPLOY / "grafana" / "build_dashboard.py"))
    assert DASHBOARD.read_text() == ns["render"](), (
        "deploy/grafana/dashboards/journey.json is stale: run python deploy/grafana/build_dashboard.py")


def test_dashboard_loads_as_a_grafana_model_bound_to_the_pinned_datasource():
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import prometheus
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

    register_default_plugins()
    raw = _dashboard()
    model = Dashboard.from_json(raw)
    assert model.uid == raw["uid"] and model.title and model.schema_version >= 36
    pinned = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]

    rows = [p for p in model.panels if isinstance(p, RowPanel)]
    panels = [p for p in model.panels if isinstance(p, Panel)]
    assert [r.title for r in rows] == ["Overview", "Latency and lag", "Event time: watermarks and timers",
                                       "Errors and dead letters", "Relationships (aggregates)", "Journeys",
                                       "Experiments",
                                       "HTTP intake", "Webhook delivery (journey dispatch)",
                                       "Last replay or backfill"]
    ids = [p.id_val for p in model.panels]
    assert len(ids) == len(set(ids)) and None not in ids, "panel ids are unique"
    titles = [p.title for p in panels]
    assert len(titles) == len(set(titles)), "panel titles are unique"
    for p in panels:
        assert p.datasource.uid == pinned and p.datasource.type_val == "prometheus", p.title
        assert p.targets, p.title
        ref_ids = [t.ref_id for t in p.targets]
        assert len(ref_ids) == len(set(ref_ids)), p.title
        for t in p.targets:
            assert isinstance(t, prometheus.Dataquery), (p.title, type(t))  # decoded as a Prometheus query
            ds = t.datasource  # a dict in the models of Grafana 10, a DataSourceRef from 11
            assert (ds["uid"] if isinstance(ds, dict) else ds.uid) == pinned, p.title
            assert t.expr.strip(), p.title
        assert p.description, f"{p.title}: every panel says what it shows"

    # the grid: inside 24 columns, no two panels overlap
    cells = set()
    for p in model.panels:
        g = p.grid_pos
        assert 0 <= g.x and g.x + g.w <= 24, p.title
        for x in range(g.x, g.x + g.w):
            for y in range(g.y, g.y + g.h):
                assert (x, y) not in cells, f"{p.title} overlaps another panel"
                cells.add((x, y))


def test_grafana_provisioning_points_at_the_compose_services():
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus" and ds[0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "journey.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana_mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["grafana"]["volumes"]
                          if v.startswith("./"))
    assert grafana_mounts["./deploy/grafana/dashboards"] == prov["providers"][0]["options"]["path"]
    assert (ROOT / "deploy/grafana/provisioning").is_dir() and "./deploy/grafana/provisioning" in grafana_mounts
    assert any(v.startswith("./deploy/prometheus:/etc/prometheus") for v in compose["prometheus"]["volumes"])
    assert {"kafka", "worker", "intake", "prometheus", "grafana", "kafka-ui"} <= set(compose)
    # Prometheus finds the intake by its compose service name, on the port the service listens on
    scrape = {j["job_name"]: j for j in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())[
        "scrape_configs"]}
    sd = scrape["journey-intake"]["dns_sd_configs"][0]
    intake = compose["intake"]
    assert sd["names"] == ["intake"]
    assert sd["port"] == int(intake["environment"]["JOURNEY_INTAKE_PORT"])
    assert intake["environment"]["JOURNEY_INTAKE_HOST"] == "0.0.0.0"
    assert f"127.0.0.1:{sd['port']}:{sd['port']}" in intake["ports"]
    # the write key comes from the environment of `docker compose`, never from this file
    assert intake["environment"]["JOURNEY_WRITE_KEYS"] == "${JOURNEY_WRITE_KEYS:-}"
    for name, svc in compose.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_replay_metrics_file(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(str(log), customers=200, events=4000, seed=3)
    prom, summary = tmp_path / "journey_replay.prom", tmp_path / "summary.json"
    subprocess.run([sys.executable, "-m", "journey", "replay", str(log), "--out", str(tmp_path / "t.jsonl"),
                    "--rules", str(_rules_with_steps(tmp_path)),
                    "--summary-json", str(summary), "--metrics-file", str(prom), "--metrics-run", "backfill",
                    "-q"], check=True, timeout=120)
    text = prom.read_bytes()

    from prometheus_client.parser import text_string_to_metric_families

    s = orjson.loads(summary.read_bytes())
    samples = [smp for f in text_string_to_metric_families(text.decode()) for smp in f.samples]
    assert all(smp.labels["run"] == "backfill" for smp in samples)

    def total(name, **labels):
        return sum(x.value for x in samples if x.name == name and all(x.labels.get(k) == v for k, v in labels.items()))

    assert total("journey_replay_lines") == s["lines"] > 0
    assert total("journey_replay_triggers") == s["triggers"] > 0
    for rule, n in s["triggers_by_rule"].items():
        assert total("journey_replay_triggers", rule=rule) == n
    assert total("journey_replay_suppressions") == sum(s["suppressed_by_reason"].values())
    assert total("journey_replay_rejected") == sum(s["rejected_by_reason"].values())
    assert total("journey_replay_events_applied") == s["events_applied"]
    assert total("journey_replay_customers") == s["customers"]
    assert total("journey_replay_watermark_seconds") == s["watermark"] / 1000
    assert {x.labels["kind"] for x in samples if x.name == "journey_replay_triggers"} <= {"recovery", "recognition"}
    # the multi-step journey: its instances and steps as the summary counts them, every step and outcome
    # of the rule file exported (0 for what did not happen), and nothing else in the labels
    inst = s["instances"]["checkout_steps"]
    assert inst["entered"] > inst.get("exited", 0) > 0 and inst.get("finished", 0) > 0, inst
    assert inst["entered"] == s["steps"]["checkout_steps"]["settle"]["reached"]
    assert {x.labels["outcome"]: x.value for x in samples if x.name == "journey_replay_journey_instances" and
            x.labels["journey"] == "checkout_steps"} == {
        outcome: inst.get(outcome, 0) for outcome in ("entered", "finished", "exited", "step_limit", "dropped")}
    steps = {(x.labels["step"], x.labels["outcome"]): x.value for x in samples
             if x.name == "journey_replay_journey_steps" and x.labels["journey"] == "checkout_steps"}
    assert steps == {(step, outcome): s["steps"]["checkout_steps"].get(step, {}).get(outcome, 0)
                     for step in STEP_NAMES for outcome in ("reached", "exited")}
    assert steps[("settle", "reached")] > steps[("reminder", "reached")] >= steps[("back", "reached")] > steps[
        ("nudge", "reached")] > 0
    assert {frozenset(x.labels) for x in samples if x.name.startswith("journey_replay_journey_")} == {
        frozenset({"run", "journey", "outcome"}), frozenset({"run", "journey", "step", "outcome"})}
    # last: promtool's linter (a machine without promtool skips only this, after the checks above)
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), (r.stdout + r.stderr).decode()


# -- a real Prometheus scraping a real worker --------------------------------------------------------------

class _Prometheus:
    def __init__(self, tmp_path: Path, config: dict):
        self.port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        _ok(promtool("check", "config", str(cfg)))
        self.log = tmp_path / "prometheus.log"
        self.proc = subprocess.Popen(
            [_tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query answers 400 with the reason
            return json.loads(e.read())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def stop(self):
        stop_process(self.proc)


def _serve_dir(path: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


class _Intake:
    """A ``journey intake`` child process on its own topic prefix, so what it writes stays away from the
    worker's topics (and the worker's numbers checked below stay the worker's)."""

    KEY = "test-write-key"
    PREFIX = "intake-test."

    def __init__(self, broker: str, tmp_path: Path):
        self.port = free_port()
        self.log = tmp_path / "intake.log"
        env = {**os.environ, "JOURNEY_WRITE_KEYS": self.KEY, "JOURNEY_TOPIC_PREFIX": self.PREFIX}
        self.proc = subprocess.Popen([sys.executable, "-m", "journey", "intake", "--broker", broker,
                                      "--port", str(self.port)], env=env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def wait_ready(self, timeout: float = 60) -> None:
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"intake exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as r:
                    return json.loads(r.read()).get("ready")
            except OSError:
                return None
        wait_for(ok, timeout, "the intake to be ready", every=0.3)

    def post(self, endpoint: str, body: dict, key: str | None = KEY) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/{endpoint}", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> int:
        return stop_process(self.proc)


# panels that may be empty here: the log has no quiet hours, and no dispatcher runs in this test
# (tests/test_dispatch.py checks the dispatcher's own metrics)
MAY_BE_EMPTY = {"Deferrals/s by reason", "Deliveries/s by endpoint and outcome", "Delivery latency",
                "Retries/s and attempts/s by result", "Webhook dead letters/s by reason",
                "Pending deliveries and disabled endpoints", "Skipped on purpose"}


def test_real_prometheus_scrapes_the_worker_and_evaluates_every_query(broker, tmp_path):
    _tool("prometheus")
    log = tmp_path / "log.jsonl"
    write_log(str(log), customers=300, events=6000, seed=7)   # includes a few malformed lines
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    rules = _rules_with_steps(tmp_path)   # journeys on, a multi-step one among them: their series too
    subprocess.run([sys.executable, "-m", "journey", "replay", str(log), "--out", str(tmp_path / "r.jsonl"),
                    "--rules", str(rules), "--metrics-file", str(textfiles / "journey_replay.prom"), "-q"],
                   check=True, timeout=120)
    srv, file_port = _serve_dir(textfiles)

    w = Worker(broker, tmp_path, idle="2s", rules=str(rules))
    intake = _Intake(broker, tmp_path)
    prom = None
    try:
        w.wait_ready()
        intake.wait_ready()
        prom = _Prometheus(tmp_path, {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "journey", "static_configs": [{"targets": [f"127.0.0.1:{w.port}"]}]},
                {"job_name": "journey-replay", "metrics_path": "/journey_replay.prom",
                 "static_configs": [{"targets": [f"127.0.0.1:{file_port}"]}]},
                {"job_name": "journey-intake", "static_configs": [{"targets": [f"127.0.0.1:{intake.port}"]}]},
            ],
        })
        # the HTTP intake: a batch as the SDKs send it (one message no worker would take), a single call
        # with the key in the body, and one with a key that is not valid
        status, answer = intake.post("batch", {"batch": [
            {"type": "track", "event": "Order Completed", "userId": "http-1", "messageId": "h-1",
             "properties": {"order_id": "o-h1", "revenue": 12.5}},
            {"type": "identify", "userId": "http-1", "messageId": "h-2", "traits": {"timezone": "UTC"}},
            {"type": "page", "anonymousId": "visitor-h", "messageId": "h-3", "name": "Pricing"},
            {"type": "track", "event": "Order Completed", "messageId": "h-4"}]})   # no user: dead-lettered
        assert (status, answer) == (200, {"success": True, "accepted": 3, "rejected": 1}), answer
        status, answer = intake.post("track", {"writeKey": _Intake.KEY, "userId": "http-2", "event": "Signed Up"},
                                     key=None)
        assert (status, answer["accepted"]) == (200, 1), answer
        assert intake.post("track", {"userId": "http-3", "event": "Signed Up"}, key="not-a-key")[0] == 401
        produce_log(broker, log)
        triggers = wait_for(lambda: (n := len(read_topic(broker, topics.TRIGGERS, idle_ms=500))) > 0 and n, 90,
                            "triggers")
        # the worker's own exposition passes promtool's linter
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as r:
            exposition = r.read()
        lint = promtool("check", "metrics", stdin=exposition)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), (lint.stdout + lint.stderr).decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{intake.port}/metrics", timeout=5) as r:  # and the intake's
            lint = promtool("check", "metrics", stdin=r.read())
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), (lint.stdout + lint.stderr).decode()

        # enough scrapes for rates over 30 s, with the worker settled
        def settled():
            n = len(read_topic(broker, topics.TRIGGERS, idle_ms=300))
            r = prom.query('sum(journey_triggers_total{job="journey"})')["data"]["result"]
            scraped = r and float(r[0]["value"][1])
            samples = prom.query(f'count_over_time(up{{job="journey"}}[{RATE_INTERVAL}])')["data"]["result"]
            return (scraped == n and samples and float(samples[0]["value"][1]) >= 10) and n
        n_triggers = wait_for(settled, 90, "Prometheus to scrape every trigger the worker wrote", every=1)
        assert n_triggers >= triggers

        # every dashboard query is valid PromQL, and the panels return data
        empty = []
        for title, expr in _queries(_dashboard()):
            res = prom.query(expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE))
            assert res["status"] == "success", (title, expr, res)
            if not res["data"]["result"]:
                empty.append(title)
        assert set(empty) <= MAY_BE_EMPTY, f"panels without data: {sorted(set(empty) - MAY_BE_EMPTY)}"

        # the dashboard's numbers are the worker's numbers
        def scalar(expr):
            return float(prom.query(expr)["data"]["result"][0]["value"][1])
        assert scalar("sum(journey_triggers_total)") == n_triggers
        assert scalar("sum(journey_replay_triggers)") == len((tmp_path / "r.jsonl").read_bytes().splitlines())
        assert scalar("sum(journey_deadletters_total)") == len(read_topic(broker, topics.DEADLETTER, idle_ms=300)) > 0
        assert scalar('sum(up{job="journey"})') == 1
        # the Journeys row: instances of the multi-step journey entered, each at its first step; the funnel
        # has a bar for every step of it, and the replay's funnel too
        entered = scalar('sum(journey_journey_instances_total{journey="checkout_steps", outcome="entered"})')
        assert entered > 0 and scalar('sum(journey_journey_steps_total{journey="checkout_steps", step="settle", '
                                      'outcome="reached"})') == entered
        assert scalar('sum(journey_journey_steps_total{journey="checkout_steps", step="reminder", '
                      'outcome="reached"})') > 0
        funnels = {title: expr for title, expr in _queries(_dashboard()) if "funnel" in title}
        for title, expr in funnels.items():
            res = prom.query(expr.replace("$__range", RANGE))["data"]["result"]
            bars = {r["metric"]["step"]: float(r["value"][1]) for r in res if r["metric"]["journey"] == "checkout_steps"}
            assert set(bars) == set(STEP_NAMES) and bars["settle"] > 0, (title, bars)
            assert [float(r["value"][1]) for r in res] == sorted((float(r["value"][1]) for r in res), reverse=True)
        assert len(funnels) == 2
        assert scalar('sum(journey_replay_journey_instances{journey="checkout_steps", outcome="entered"})') > 0
        # ... and the intake's are what it answered and wrote
        assert scalar('sum(up{job="journey-intake"})') == 1 == scalar("min(journey_intake_kafka_up)")
        assert scalar("sum(journey_intake_messages_accepted_total)") == 4
        assert scalar('sum(journey_intake_messages_accepted_total{topic="intake-test.journey.purchases"})') == 1
        assert scalar("sum(journey_intake_messages_rejected_total)") == 1 == len(
            read_topic(broker, _Intake.PREFIX + topics.DEADLETTER, idle_ms=300))
        assert scalar('sum(journey_intake_requests_total{status="401"})') == 1
        assert scalar('sum(journey_intake_requests_total{status=~"2.."})') == 2
        assert scalar("max(journey_intake_bytes_in_flight_limit)") == 64 << 20
        assert scalar("max(journey_intake_write_keys)") == 1

        # every alert and recording rule evaluates without error in Prometheus itself
        for r in _rules():
            res = prom.query(r["expr"])
            assert res["status"] == "success", (r.get("alert") or r.get("record"), res)

        def evaluated():
            groups = prom.api("rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == len(_rules()) and all(r.get("lastEvaluation", "").startswith("20") and
                                                       not r["lastEvaluation"].startswith("0001") for r in rules) and rules
        rules = wait_for(evaluated, 30, "Prometheus to evaluate every rule", every=1)
        for r in rules:
            assert r["health"] == "ok", (r["name"], r.get("lastError"))
        firing = {r["name"] for r in rules if r.get("type") == "alerting" and r["state"] != "inactive"}
        assert not firing & {"JourneyWorkerDown", "JourneyNoWorkers", "JourneyIntakeErrors",
                             "JourneyIntakeKafkaDown"}, firing
    finally:
        if prom:
            prom.stop()
        srv.shutdown()
        stopped = intake.stop(), w.stop()
        assert stopped[0] == 0, intake.log.read_text()[-3000:]
        assert stopped[1] == 0, w.log.read_text()[-3000:]


def test_the_shipped_examples_stand_alone_and_check_clean():
    """The example files a user copies (journey/examples, deploy/; some are symlinks) cite no document the
    user does not have (the project's internal domain.md and its section numbers), and each rule file
    among them passes `journey rules check`."""
    import re

    files = sorted({*(ROOT / "journey" / "examples").glob("*.toml"), *DEPLOY.glob("*.toml"),
                    *DEPLOY.glob("kubernetes/*.yaml"), *DEPLOY.glob("prometheus/*.yml")})
    assert len(files) >= 8
    cited = [f"{f.relative_to(ROOT)}: {line.strip()}" for f in files for line in f.read_text().splitlines()
             if "domain.md" in line or re.search(r"\bsections? \d", line)]
    assert not cited, "\n".join(cited)
    for f in files:
        if f.suffix == ".toml" and "[engine]" in f.read_text() or f.name in ("journeys.example.toml",
                                                                             "simulate.rules.toml"):
            p = subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(f)], capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert p.returncode == 0 and ": ok (" in p.stdout, (f, p.stdout, p.stderr)
