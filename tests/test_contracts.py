"""Outputs against the published schemas in topics/, and the example rule file."""

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from journey.core.config import Config
from journey.core.intake import REASONS
from journey.core.timeutil import parse_time
from journey.history.replay import replay
from journey.history.synth import write_log
from journey.io.rulefile import config_from, load_config

ROOT = Path(__file__).resolve().parent.parent


def validator(name):
    schema = json.loads((ROOT / "topics" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    log = d / "log.jsonl"
    write_log(str(log), customers=300, events=6000, seed=9)
    with open(log, "ab") as f:
        f.write(b'\xff\xfe\n{"type":"track","event":"Order Completed","userId":"c1","timestamp":"2026-03-01T10:00:00"}\n')
    paths = {k: d / f"{k}.jsonl" for k in ("out", "audit", "dl", "outcomes")}
    # with experiments (holdouts and a variant) on two rules, so outcome records are written too
    exp = {"salt": "s", "holdout": 0.3, "goal": "order.completed", "window": "7d"}
    config = config_from({"rules": {"cart_abandoned": {"experiment": exp},
                                    "first_purchase": {"experiment": {**exp, "variants": [
                                        {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}}})
    replay([log], str(paths["out"]), str(paths["audit"]), str(paths["dl"]), until=parse_time("2026-08-01T00:00:00Z"),
           config=config, outcomes=str(paths["outcomes"]))
    return {k: [orjson.loads(x) for x in p.read_bytes().splitlines()] for k, p in paths.items()}


@pytest.mark.parametrize("kind,schema", [("out", "trigger.schema.json"), ("audit", "audit.schema.json"),
                                         ("dl", "deadletter.schema.json"), ("outcomes", "outcome.schema.json")])
def test_every_output_record_matches_its_schema(outputs, kind, schema):
    v = validator(schema)
    assert outputs[kind], f"no {kind} records to check"
    if kind == "outcomes":
        assert {r["variant"] for r in outputs[kind]} == {"holdout", "treated", "a", "b"}
    for rec in outputs[kind]:
        errors = list(v.iter_errors(rec))
        assert not errors, (rec, [e.message for e in errors])


def test_deadletter_reasons_in_schema_match_the_code():
    schema = json.loads((ROOT / "topics" / "deadletter.schema.json").read_text())
    assert set(schema["properties"]["reason"]["enum"]) == set(REASONS)


def test_example_rule_file_is_valid_and_equals_the_defaults():
    assert load_config(ROOT / "deploy" / "rules.example.toml").describe() == Config().describe()
