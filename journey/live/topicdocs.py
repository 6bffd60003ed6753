"""``journey topics export``: the topic catalogue and an AsyncAPI 3.0 document,
written from ``journey.topics`` (the one source of truth; a test checks the
committed files are current)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..io import topics

HEADER = "# Written by `journey topics export` from journey/topics.py; do not edit by hand.\n"


def catalog_doc(partitions: int = topics.PARTITIONS) -> dict:
    return {"partitions": partitions,
            "note": "all topics share one partition count: a customer's events and state live on one partition",
            "topics": topics.catalog(partitions)}


def asyncapi_doc(partitions: int = topics.PARTITIONS) -> dict:
    channels, operations, messages = {}, {}, {}
    for t in topics.catalog(partitions):
        cid = t["name"].replace(".", "_").replace("-", "_")
        if t["schema"]:
            mname = t["schema"].split(".")[0]
            messages[mname] = {
                "name": mname,
                "contentType": "application/cloudevents+json" if mname == "trigger" else "application/json",
                "payload": {"$ref": f"./{t['schema']}"},
            }
            msgs = {mname: {"$ref": f"#/components/messages/{mname}"}}
        else:
            msgs = {"state": {"$ref": "#/components/messages/state"}}
        channels[cid] = {
            "address": t["name"],
            "description": t["description"],
            "messages": msgs,
            "bindings": {"kafka": {"partitions": t["partitions"], "topicConfiguration": {
                "cleanup.policy": [t["config"]["cleanup.policy"]],
                "retention.ms": int(t["config"]["retention.ms"])}}},
        }
        action = "receive" if t["role"] == "source" else "send"
        operations[f"{action}_{cid}"] = {"action": action, "channel": {"$ref": f"#/channels/{cid}"}}
    messages["state"] = {"name": "state", "contentType": "application/octet-stream",
                         "summary": "one customer's state (internal; JSON, compact keys), key = customer id"}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "journey", "version": "0.1.0",
                 "description": "Kafka topics of journey: customer events in, relationship-aware triggers out. "
                                "Every record is keyed by customer id."},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render(doc: dict) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def export(directory: str = "topics", partitions: int = topics.PARTITIONS) -> list[str]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name, doc in (("catalog.yaml", catalog_doc(partitions)), ("asyncapi.yaml", asyncapi_doc(partitions))):
        (d / name).write_text(render(doc))
        out.append(str(d / name))
    from .. import schemas

    for f in sorted(schemas.DIR.glob("*.schema.json")):  # the schemas the documents point at
        target = d / f.name
        if target.resolve() != f.resolve():
            target.write_bytes(f.read_bytes())
        out.append(str(target))
    return out
