"""The topic catalogue, its documents, the input event schema, and topic creation on a real broker."""

import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from journey.history.synth import generate
from journey.io import topics
from journey.live.broker import EmbeddedBroker
from journey.live.topicdocs import asyncapi_doc, catalog_doc, render

ROOT = Path(__file__).resolve().parents[1]


def test_committed_documents_are_current():
    assert (ROOT / "topics" / "catalog.yaml").read_text() == render(catalog_doc()), \
        "run `journey topics export` and commit topics/"
    assert (ROOT / "topics" / "asyncapi.yaml").read_text() == render(asyncapi_doc())


def test_asyncapi_refs_resolve_and_every_topic_is_described():
    doc = yaml.safe_load((ROOT / "topics" / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {t["name"] for t in topics.catalog()}
    for m in doc["components"]["messages"].values():
        ref = m.get("payload", {}).get("$ref")
        if ref:
            schema = orjson.loads((ROOT / "topics" / ref).read_bytes())
            jsonschema.Draft202012Validator.check_schema(schema)
    for op in doc["operations"].values():
        assert op["channel"]["$ref"].split("/")[-1] in doc["channels"]


def test_one_partition_count_for_everything_the_worker_joins():
    counts = {t["partitions"] for t in topics.catalog(8)}
    assert counts == {8}


def test_generated_events_match_the_input_schema():
    schema = orjson.loads((ROOT / "topics" / "event.schema.json").read_bytes())
    v = jsonschema.Draft202012Validator(schema)
    n = 0
    for _ts, stream, rec in generate(50, 1500, seed=3):
        v.validate(rec)
        assert stream in topics.SOURCES
        n += 1
    assert n > 500
    assert list(v.iter_errors({"type": "track", "event": "Order Completed"}))  # no customer: invalid


@pytest.mark.live
def test_topics_create_is_idempotent(tmp_path):
    with EmbeddedBroker(log_path=str(tmp_path / "b.log")) as b:
        cmd = [sys.executable, "-m", "journey", "topics", "create", "--broker", b.url]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    names = {t["name"] for t in topics.catalog()}
    assert {line.split()[0] for line in first.stdout.splitlines() if line.split()[1] == "created"} == names
    assert {line.split()[0] for line in second.stdout.splitlines() if line.split()[1] == "exists"} == names


@pytest.mark.live
def test_a_topic_prefix_names_every_topic_for_a_shared_cluster(tmp_path):
    import os

    env = {**os.environ, "JOURNEY_TOPIC_PREFIX": "team-a."}
    with EmbeddedBroker(log_path=str(tmp_path / "b.log")) as b:
        r = subprocess.run([sys.executable, "-m", "journey", "topics", "create", "--broker", b.url],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        created = {line.split()[0] for line in r.stdout.splitlines() if line.split()[1] == "created"}
        assert created == {"team-a." + t["name"] for t in topics.catalog()}
        assert "team-a.journey-customers-changelog" in created and "team-a.journey.triggers" in created
        # the other deployment's names are still free
        r2 = subprocess.run([sys.executable, "-m", "journey", "topics", "create", "--broker", b.url],
                            capture_output=True, text=True, timeout=60)
        assert {line.split()[1] for line in r2.stdout.splitlines()} == {"created"}
    bad = subprocess.run([sys.executable, "-m", "journey", "topics", "create"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "JOURNEY_TOPIC_PREFIX": "a b/"})
    assert bad.returncode == 2 and "JOURNEY_TOPIC_PREFIX" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args,waited", [((), 5), (("--timeout", "2"), 2)])
def test_topics_create_on_a_wrong_broker_fails_fast_in_one_line(args, waited):
    """Nothing listens at the address: one line saying so and what to check, within the wait
    (5 s by default, --timeout), exit 1; no client noise, no traceback (issue 31, point 5)."""
    import os
    import time

    from journey.live.broker import free_port

    url = f"kafka://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "JOURNEY_BROKER_WAIT"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "journey", "topics", "create", "--broker", url, *args],
                       capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - t0
    assert p.returncode == 1, p.stderr
    assert p.stdout == "" and len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"journey topics: no Kafka broker answered at {url} within {waited} s "
                               "(connection refused: nothing listens on that port). Check the address"), p.stderr
    assert "--timeout" in p.stderr and "journey broker" in p.stderr
    assert took < waited + 15, took  # the interpreter's start and imports are in it too


def test_the_intake_on_a_wrong_broker_says_so_in_one_line():
    """The HTTP intake waits JOURNEY_BROKER_WAIT for Kafka, then ends with the same sentence, no traceback."""
    import os

    from journey.live.broker import free_port

    url = f"kafka://127.0.0.1:{free_port()}"
    p = subprocess.run([sys.executable, "-m", "journey", "intake", "--broker", url, "--port", "0"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JOURNEY_BROKER_WAIT": "2", "JOURNEY_WRITE_KEYS": "k1"})
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [f"journey intake: no Kafka broker answered at {url} within 2 s (connection "
                                     "refused: nothing listens on that port)"], p.stderr


def test_topics_create_timeout_must_be_seconds():
    p = subprocess.run([sys.executable, "-m", "journey", "topics", "create", "--timeout", "soon"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--timeout: 'soon': give seconds from 0 to 3600" in p.stderr, p.stderr


def test_export_writes_every_schema_its_documents_point_at(tmp_path):
    import re

    from journey.live.topicdocs import export

    export(str(tmp_path))
    named = set(re.findall(r"([a-z-]+\.schema\.json)", (tmp_path / "catalog.yaml").read_text()
                           + (tmp_path / "asyncapi.yaml").read_text()))
    assert named and all((tmp_path / n).is_file() for n in named), named


def test_produce_sends_in_event_time_order_unless_as_is(tmp_path):
    import random

    from journey.live.produce import records

    items = generate(40, 2000, 3)
    lines = [orjson.dumps(rec) for _ts, _stream, rec in items] + [b"{not json"]
    random.Random(1).shuffle(lines)
    log = tmp_path / "shuffled.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    for buffer in (100, 200_000):  # spilled runs merged, and all in memory
        out = list(records([log], sort_buffer=buffer))
        assert len(out) == len(lines)
        assert out[0][1] is None and out[0][3] is None  # the line that does not parse goes first, unkeyed
        stamps = [ts for *_x, ts in out[1:]]
        assert stamps == sorted(stamps)
    as_is = [v for _t, _k, v, _ts in records([log], as_is=True)]
    assert as_is == lines
