"""The live worker: a Faust app around the same core as ``journey replay``.

This module wires the app (``build_app``) and runs it (``run``). The parts:
``settings`` (flags and environment), ``table`` (the customer table and its
changelog tail recovery), ``runtime`` (records in, per partition), ``outputs``
(batched output, checkpoints, acknowledgements), ``processor`` (one
partition's engine and watermark, no Kafka), ``batching`` (the batched
hand-off inside Faust's consumer), ``metrics`` and ``gcpolicy``.

The app reads the three source topics and ``journey.internal`` (all
co-partitioned) as raw bytes; its consumer hands each fetch over whole
(``journey.live.batching``) to ``Runtime.handle``. Each record is parsed by
``intake.parse``; a record that fails goes to ``journey.deadletter`` with its
topic, partition and offset. A record found on a partition other than its
customer's is re-keyed through ``journey.internal`` (its event time becomes
the record timestamp). Everything else is offered to the
``PartitionProcessor`` of its partition: one engine and one event-time
timeline per partition, exactly the calls replay makes.

State lives in the Faust table ``customers`` (changelog
``journey-customers-changelog``), one record per customer, written once per
customer per checkpoint (``checkpoint``), always to the customer's own
partition. A record is acknowledged only after its event was applied and the
state and output it caused were handed to the producer; Faust commits the
unbroken acknowledged run after flushing the producer, so the guarantee is
at-least-once, and a redelivered event is recognized by its id (and any
trigger it causes again has the same id).

On assignment, after Faust's changelog recovery, the worker checks each
changelog partition against the high watermark that Fetch reports, and reads
any tail Faust's recovery missed (brokers whose ListOffsets answer is stale,
such as Tansu 0.6); then it loads the partition's customers and rebuilds
their timers.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.config import Config
from ..io import errors, topics
from ..io.connection import PLAINTEXT, KafkaConnectFailed, KafkaConnection
from ..io.kafka import broker_wait, ensure_topics, faust_url
from ..io.rulefile import load_config
from .batching import BatchApp
from .gcpolicy import tune_gc
from .metrics import registry_for
from .runtime import Runtime
from .settings import Settings
from .table import CustomerTable


def build_app(settings: Settings, config: Config | None = None,
              conn: KafkaConnection = PLAINTEXT) -> tuple[faust.App, Runtime]:
    config = config if config is not None else (load_config(settings.rules) if settings.rules else Config())
    rt = Runtime(settings, config)
    rt.conn = conn
    store = settings.store
    app = BatchApp(
        settings.app_id,
        broker=faust_url(settings.broker),
        # SASL and TLS for Faust's consumer, producer and admin client (None: plaintext)
        broker_credentials=conn.faust_credentials(),
        store=store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval,
        broker_commit_every=1 << 62,  # commits come from the interval timer, not the drain loop
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 5),
        broker_rebalance_timeout=settings.session_timeout,
        stream_wait_empty=False,
        table_standby_replicas=0,
        # Faust compares the persisted offset with the ListOffsets answer, which some brokers
        # give stale (Tansu 0.6: "persisted offset higher than highwater"); the table's own check
        # (journey.live.table) reads the changelog to the high watermark Fetch reports instead
        recovery_consistency_check=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=1 << 20,
        consumer_max_fetch_size=8 << 20,
        broker_max_poll_records=settings.batch,  # one fetch = one batch: keeps the loop responsive
    )
    table = CustomerTable(app, name=topics.TABLE, partitions=settings.partitions, beacon=app.tables.beacon,
                          key_type=bytes, value_type=bytes, help="per-customer state")
    table.runtime = rt
    app.tables.add(table)
    rt.table = table
    rt.app = app
    def raw_topic(*names):
        # bytes in, bytes out: decoding is ours (a typed stream dies on a bad record)
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=settings.partitions)

    source = raw_topic(*topics.SOURCES, topics.INTERNAL)

    # no agent: the consumer hands each fetch to the runtime whole (journey.live.batching)
    app.topics.add(source)
    app.batch_handler = rt.handle
    app.fetch_wait_ms = int(settings.fetch_wait * 1000)
    app.batch_topics = frozenset((*topics.SOURCES, topics.INTERNAL))

    async def after_batch():
        await rt.send_outputs()
        producer_buffer = app.producer.buffer
        if producer_buffer.size > 10_000:
            await producer_buffer.wait_until_ebb()

    app.after_batch = after_batch

    @app.timer(interval=0.25, name="journey.idle_watermarks")
    async def idle_watermarks():
        if rt.ready:
            rt.tick()
            await rt.send_outputs()

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok"})

    registry = registry_for(rt)

    @app.page("/metrics")
    async def metrics(web, request):
        # the exposition format 0.0.4 (aiohttp sets the charset itself)
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/ready")
    async def ready(web, request):
        # not ready before the first assignment, nor while a partition is stuck (Runtime.watch)
        ok = rt.ready and not rt.stuck
        body = {"ready": ok, "partitions": sorted(rt.procs), "stuck": {str(p): why for p, why in sorted(rt.stuck.items())},
                "detail": rt.describe(), "counts": rt.counts}
        return web.json(body, status=200 if ok else 503)

    return app, rt


def status_printer(settings: Settings):
    """The worker's status lines on standard error (start, assignment, caught up), unless the log
    level is error or critical. They name counts, partitions and settings, never a customer or a
    secret."""
    if settings.loglevel.lower() in ("error", "critical"):
        return lambda line: None

    def say(line: str) -> None:
        print(f"journey worker: {line}", file=sys.stderr, flush=True)

    return say


def shown_broker(url: str) -> str:
    """The broker URL without any user:password@ part (a URL may carry one)."""
    return ",".join(p.split("://", 1)[0] + "://" + p.split("://", 1)[1].rsplit("@", 1)[-1] if "://" in p
                    else p.rsplit("@", 1)[-1] for p in url.split(","))


def run(settings: Settings, conn: KafkaConnection = PLAINTEXT) -> int:
    """Create missing topics, then run the worker until SIGINT/SIGTERM."""
    logging.basicConfig(level=getattr(logging, settings.loglevel.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(settings.rules) if settings.rules else Config()
    say = status_printer(settings)
    enabled = sum(1 for p in config.rules.values() if p.enabled)
    fp = config.fingerprint()
    rules = (f"rules {settings.rules} (fingerprint {fp}: {enabled} built-in rule(s) enabled, "
             f"{len(config.journeys)} journey(s))"
             if settings.rules else f"the built-in rules (fingerprint {fp}: {enabled} enabled; --rules FILE for your own)")
    store = settings.store + (f" in {settings.data_dir}" if settings.store.lower().startswith("rocksdb") else "")
    say(f"starting: broker {shown_broker(settings.broker)} ({conn.describe()}), group {settings.app_id}, {rules}, "
        f"store {store}, health and metrics on http://{settings.web_host}:{settings.web_port}")
    try:
        status = asyncio.run(ensure_topics(settings.broker, settings.partitions, settings.app_id,
                                           settings.replication, timeout=broker_wait(), on_wait=lambda: print(
                                               f"journey worker: waiting for the broker at {settings.broker} "
                                               f"(up to {broker_wait():g} s) ...", file=sys.stderr), conn=conn))
    except KafkaConnectFailed as e:  # credentials, certificates, a listener of another protocol, ACLs
        print(f"journey worker: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # no broker there (ensure_topics retried for 30 s)
        print(f"journey worker: {errors.what(e)}. Is a Kafka broker listening at {settings.broker}? Start one (journey "
              "broker runs an embedded one for trials; docker compose up starts Kafka) or give --broker URL", file=sys.stderr)
        return 1
    for name, what in status.items():
        if what not in ("created", "exists"):
            raise SystemExit(f"journey worker: topic {name} {what}")
    asyncio.set_event_loop(asyncio.new_event_loop())
    app, rt = build_app(settings, config, conn)
    rt.say = say
    tune_gc(settings.gc_gen0)
    worker = faust.Worker(app, loglevel=settings.loglevel.upper(), quiet=True,
                          override_logging=False)
    worker.spinner = None  # no terminal spinner and cursor codes: the status lines say how it goes
    worker.execute_from_commandline()
    return 0
