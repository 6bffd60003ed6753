"""Kafka plumbing shared by the worker, ``journey topics create`` and
``journey produce``: broker URLs, the key partitioner, topic creation.

Partitioning is Kafka's default (murmur2 of the key bytes, as the Java client
and aiokafka do). A customer's state lives on ``partition_of(customer id)``;
a record found on another partition (its producer keyed it by something
else, or used librdkafka's default CRC32 partitioner) is re-keyed through
``journey.internal``.
"""

from __future__ import annotations

import asyncio
import os

from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2

from . import topics
from .connection import (  # noqa: F401 - bootstrap is imported from here by the shells
    PLAINTEXT,
    BrokerUnreachable,
    KafkaConnectFailed,
    KafkaConnection,
    bootstrap,
    client_errors,
    explain,
    probe,
)


def faust_url(url: str) -> str:
    return ";".join("kafka://" + p for p in bootstrap(url).split(","))


def partition_of(key: str | bytes, partitions: int) -> int:
    """Kafka's default partition for a key (murmur2, as the Java client)."""
    if isinstance(key, str):
        key = key.encode()
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Partitioner:
    """``partition_of`` with a bounded memo (the hash is pure Python)."""

    def __init__(self, partitions: int, memo: int = 1 << 18):
        self.partitions = partitions
        self.memo: dict[str, int] = {}
        self.max = memo

    def __call__(self, key: str) -> int:
        p = self.memo.get(key)
        if p is None:
            if len(self.memo) >= self.max:
                self.memo.clear()
            p = self.memo[key] = partition_of(key, self.partitions)
        return p


async def ensure_topics(url: str, partitions: int = topics.PARTITIONS, app_id: str = topics.APP_ID,
                        replication: int = 1, timeout: float = 30.0, on_wait=None,
                        conn: KafkaConnection = PLAINTEXT) -> dict[str, str]:
    """Create every catalogue topic that does not exist yet. Returns name -> "created" or
    "exists" (with a warning text when an existing topic's partition count differs).
    ``on_wait()`` is called once if the broker does not answer at the first try."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    # the wait bounds reaching the broker (start_client); a request, once there, may take as long as usual
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(url), request_timeout_ms=int(max(timeout, 30) * 1000),
                                **conn.client_options())
    await start_client(admin.start, timeout, conn, url, on_wait)
    try:
        existing = await _partition_counts(admin)
        wanted = topics.catalog(partitions, app_id)
        new = [NewTopic(t["name"], t["partitions"], replication, topic_configs=t["config"])
               for t in wanted if t["name"] not in existing]
        result = {}
        if new:
            try:
                await admin.create_topics(new)
            except Exception as exc:  # a concurrent creator (another worker) won the race
                what = type(exc).__name__ + str(exc)
                if "TopicAuthorizationFailed" in what or "ClusterAuthorizationFailed" in what:
                    raise KafkaConnectFailed(
                        f"the cluster's ACLs do not let this user create topics ({', '.join(t.name for t in new)}): "
                        "have them created by an administrator with the settings `journey topics export` writes, "
                        "or grant CREATE on them") from None
                if "TopicAlreadyExists" not in what:
                    raise
            for t in new:
                result[t.name] = "created"
        for t in wanted:
            if t["name"] in existing:
                n = existing[t["name"]]
                result[t["name"]] = "exists" if n == t["partitions"] else (
                    f"exists with {n} partitions, not {t['partitions']}: the worker needs one partition "
                    f"count for all its topics; recreate it or run with --partitions {n}")
        return result
    finally:
        await admin.close()


async def read_topic(url: str, topic: str, timeout: float = 60.0, idle_ms: int = 500,
                     conn: KafkaConnection = PLAINTEXT, missing_ok: bool = False):
    """Every record value of ``topic`` from its start to its end when read began (async
    generator). The end is each partition's high watermark as Fetch reports it (some brokers'
    ListOffsets answers an earlier offset); ``timeout`` bounds the whole read (TimeoutError).
    ``missing_ok``: a topic the cluster does not have gives nothing (else the read waits for
    it until ``timeout``)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap(url), auto_offset_reset="earliest", group_id=None,
                         enable_auto_commit=False, request_timeout_ms=int(min(timeout, 30) * 1000) + 1000,
                         **conn.client_options())
    await start_client(c.start, min(timeout, 30), conn, url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if missing_ok and topic not in await c.topics():
            return
        while True:
            if loop.time() > deadline:
                raise TimeoutError(f"{topic} was not read to its end within {timeout:g} s")
            batch = await c.getmany(timeout_ms=idle_ms)
            if not batch:
                done = bool(c.assignment())
                for tp in c.assignment():
                    hw = c.highwater(tp)
                    done = done and hw is not None and await c.position(tp) >= hw
                if done:
                    return
                continue
            for recs in batch.values():
                for r in recs:
                    yield r.value
    finally:
        await c.stop()


async def read_to_end(consumer, tps) -> bool:
    """Has ``consumer`` read each of ``tps`` up to its high watermark (as the last fetch reported it;
    Tansu's ListOffsets(latest) is not to be trusted, the Fetch's high watermark is)?"""
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is None or await consumer.position(tp) < hw:
            return False
    return True


async def _partition_counts(admin) -> dict[str, int]:
    meta = await admin.describe_topics()
    out = {}
    for t in meta:
        if not t.get("error_code"):
            out[t["topic"]] = len(t.get("partitions") or [])
    return out


def broker_wait(default: float = 30.0) -> float:
    """Seconds a command waits for its broker at start (JOURNEY_BROKER_WAIT, else ``default``)."""
    try:
        return max(0.0, float(os.environ.get("JOURNEY_BROKER_WAIT", default)))
    except ValueError:
        return default


async def start_client(start, timeout: float, conn: KafkaConnection, url: str, on_wait=None) -> None:
    """Start a Kafka client, retrying while the broker is still coming up (``on_wait()`` is called
    once, at the first failure). A failure that waiting cannot mend (credentials refused, an
    untrusted certificate, TLS against a plaintext listener or the reverse) ends it at once
    with :class:`KafkaConnectFailed` naming the likely cause; so does the end of ``timeout``,
    with the cause when the client's log shows one, else with :class:`BrokerUnreachable`
    (nothing listens there, the name does not resolve, or nothing answers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    probed = False
    with client_errors() as logged:
        while True:
            try:
                # one attempt may not outlast the wait (an address that swallows packets answers nothing)
                await asyncio.wait_for(start(), max(deadline - loop.time(), 0.0) + 1.0)
                return
            except Exception as e:
                why = explain(e, logged, conn, url)
                if why is None and not probed and not any("refused" in m.lower() for m in logged):
                    # something listens but the failure says nothing: ask what it speaks (once)
                    probed = True
                    why = await probe(url, conn)
                if why is not None:
                    raise KafkaConnectFailed(why) from None
                if loop.time() + 0.5 > deadline:
                    if isinstance(e, (KafkaConnectionError, OSError, TimeoutError)):
                        raise BrokerUnreachable(url, timeout, logged) from None
                    raise
                logged.clear()
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                await asyncio.sleep(0.5)
