"""The dispatcher: ``journey.triggers`` -> signed webhooks, at least once.

One consumer group (``dispatch.group``) reads ``journey.triggers``. Each
record is routed to its endpoints; each (trigger, endpoint) delivery is its
own task, bounded by the endpoint's concurrency, rate and backlog limits, so a
slow or failing endpoint holds up neither other endpoints nor other
customers. A record is finished when every delivery of it is delivered,
dead-lettered (``journey.triggers.deadletter``, with the last error) or
skipped on purpose; offsets are committed only over finished records.

After a 2xx the pair (endpoint, trigger id) is written to
``journey.dispatch.delivered`` (on the trigger's partition) before the record
counts as finished; a dispatcher taking a partition reads the tail of that
record back first, so the uncommitted records it reads again are not sent a
second time. Where it cannot know (killed between the 2xx and that write), the
repeat carries the same ``webhook-id``, the trigger id.

Replay safety: only records a live worker wrote (header ``journey-origin:
live``) whose trigger time is within ``dispatch.max_age`` of now are
delivered; ``--allow-replayed`` lifts both guards, explicitly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.timeutil import TimeError, parse_time
from ..io import topics
from ..io.kafka import bootstrap
from . import policy, signing
from .ledger import Delivered, Offsets
from .metrics import DispatchMetrics, result_of

log = logging.getLogger("journey.dispatch")

ORIGIN_HEADER = "journey-origin"
LIVE = b"live"
CONTENT_TYPE = "application/cloudevents+json"
COMMIT_EVERY = 0.5


class RateLimiter:
    """Token bucket: ``rate`` requests per second, bursts of up to one second's worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = max(1.0, rate)
        self.at = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class Lane:
    """One endpoint's limits and state."""

    def __init__(self, endpoint):
        self.ep = endpoint
        self.slots = asyncio.Semaphore(endpoint.concurrency)
        self.limiter = RateLimiter(endpoint.rate)
        self.pending = 0
        self.disabled = False


class Dispatcher:
    def __init__(self, cfg, broker: str, web_host: str = "127.0.0.1", web_port: int = 6067,
                 allow_replayed: bool = False, rng: random.Random | None = None):
        self.cfg, self.broker = cfg, broker
        self.web_host, self.web_port = web_host, web_port
        self.allow_replayed = allow_replayed
        self.rng = rng or random.Random()
        self.metrics = DispatchMetrics()
        self.metrics.endpoints(cfg.endpoints)
        self.lanes = {n: Lane(e) for n, e in cfg.endpoints.items()}
        self.offsets = Offsets()
        self.delivered: dict[int, Delivered] = {}
        self.tasks: dict = {}                 # tp -> set of delivery tasks
        self.remaining: dict = {}             # (tp, offset) -> deliveries not yet finished
        self.room = asyncio.Event()
        self.ready = False
        self.stopping = asyncio.Event()

    # -- Kafka ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stopping.set)
            except (NotImplementedError, RuntimeError):
                pass
        servers = bootstrap(self.broker)
        self.producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=servers, group_id=self.cfg.group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=500, fetch_max_wait_ms=100)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          headers={"user-agent": "journey-dispatch"})
        runner = await self._serve()
        try:
            await self._topics()
            await self.producer.start()
            await self.consumer.start()
            self.consumer.subscribe([topics.TRIGGERS], listener=_Listener(self))
            committer = asyncio.create_task(self._commit_loop())
            log.info("dispatching %s to %d endpoint(s) as group %s%s", topics.TRIGGERS, len(self.lanes),
                     self.cfg.group, " (replayed triggers allowed)" if self.allow_replayed else "")
            await self._read_loop()
            committer.cancel()
            await self._drain(grace=10.0)
            await self._commit()
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            await self.http.close()
            await runner.cleanup()
        return 0

    async def _topics(self) -> None:
        """Create the dispatcher's topics (and any other missing catalogue topic) with the partition
        count of journey.triggers: a delivery record goes to its trigger's partition number."""
        from aiokafka.admin import AIOKafkaAdminClient

        from ..io.kafka import _partition_counts, _retry, ensure_topics

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(self.broker))
        await _retry(admin.start, 30)
        try:
            counts = await _partition_counts(admin)
        finally:
            await admin.close()
        status = await ensure_topics(self.broker, counts.get(topics.TRIGGERS, topics.PARTITIONS))
        for name in (topics.TRIGGERS_DEADLETTER, topics.DELIVERED):
            if status.get(name) not in ("created", "exists"):
                raise SystemExit(f"journey dispatch: topic {name}: {status.get(name)}")

    async def _read_loop(self) -> None:
        while not self.stopping.is_set():
            room = self.cfg.max_in_flight - self.offsets.unfinished()
            if room <= 0:
                self.room.clear()
                try:
                    await asyncio.wait_for(self.room.wait(), 0.5)
                except TimeoutError:
                    pass
                continue
            batch = await self.consumer.getmany(timeout_ms=200, max_records=room)
            self.ready = True
            for tp, records in batch.items():
                for rec in records:
                    self._accept(tp, rec)
            self.metrics.in_flight.set(self.offsets.unfinished())

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_EVERY)
            try:
                await self._commit()
            except Exception as e:  # a rebalance in progress: the next round commits
                log.debug("commit deferred: %s", e)

    async def _commit(self, tps=None) -> None:
        offsets = {}
        for tp in list(tps if tps is not None else self.consumer.assignment()):
            off = self.offsets.committable(tp)
            if off is not None:
                offsets[tp] = off
        if offsets:
            await self.consumer.commit(offsets)

    async def assigned(self, tps) -> None:
        # no record of these partitions is handed over before their delivered ids are read back
        # (aiokafka may fetch while this listener runs)
        tps = [tp for tp in tps if tp.topic == topics.TRIGGERS]
        self.consumer.pause(*tps)
        try:
            await self._load_delivered([tp.partition for tp in tps])
        finally:
            self.consumer.resume(*[tp for tp in tps if tp in self.consumer.assignment()])

    async def revoked(self, tps) -> None:
        tps = [tp for tp in tps if tp.topic == topics.TRIGGERS]
        try:
            await self._commit(tps)
        except Exception as e:
            log.warning("could not commit revoked partitions (their unfinished triggers are read again): %s", e)
        for tp in tps:
            for t in self.tasks.pop(tp, ()):
                t.cancel()
            self.offsets.drop(tp)
            self.delivered.pop(tp.partition, None)
            for key in [k for k in self.remaining if k[0] == tp]:
                del self.remaining[key]

    async def _load_delivered(self, partitions: list[int]) -> None:
        """Read back the tail of journey.dispatch.delivered for these partitions, to the Fetch high
        watermark (not ListOffsets, which some brokers answer short)."""
        for p in partitions:
            self.delivered[p] = Delivered(self.cfg.delivered_memory)
        if not partitions or self.cfg.delivered_memory <= 0:
            return
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap(self.broker), group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=100)
        await c.start()
        try:
            tps = [TopicPartition(topics.DELIVERED, p) for p in partitions]
            c.assign(tps)
            await c.seek_to_end(*tps)
            for tp in tps:
                c.seek(tp, max(0, await c.position(tp) - self.cfg.delivered_memory))
            deadline = time.monotonic() + 60
            n = 0
            while time.monotonic() < deadline:
                batch = await c.getmany(timeout_ms=300)
                for tp, recs in batch.items():
                    for r in recs:
                        try:
                            v = orjson.loads(r.value)
                            self.delivered[tp.partition].add((v["endpoint"], v["trigger_id"]))
                            n += 1
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            continue
                if not batch:
                    done = True
                    for tp in tps:
                        hw = c.highwater(tp)
                        done = done and hw is not None and await c.position(tp) >= hw
                    if done:
                        break
            else:
                log.warning("reading %s did not reach its end in 60 s; some delivered triggers may be sent "
                            "again (with the same webhook-id)", topics.DELIVERED)
            log.info("partitions %s: %d delivered trigger ids read back", sorted(partitions), n)
        finally:
            await c.stop()

    # -- one record --------------------------------------------------------------------------------------------

    def _accept(self, tp, rec) -> None:
        m = self.metrics
        m.read.inc()
        self.offsets.read(tp, rec.offset)
        read_at = time.monotonic()
        where = {"topic": tp.topic, "partition": tp.partition, "offset": rec.offset}
        try:
            trigger = orjson.loads(rec.value)
            tid = trigger["id"]
            if not isinstance(tid, str) or not isinstance(trigger.get("data"), dict):
                raise KeyError("id")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._spawn(tp, rec.offset, [self._dead(None, rec, where, "not_a_trigger", None, 0, None, None)])
            return
        if not self.allow_replayed:
            why = self._not_for_delivery(trigger, rec)
            if why:
                m.skipped.labels(why).inc()
                self._finish(tp, rec.offset)
                return
        names = self.cfg.route(trigger)
        if not names:
            m.skipped.labels("no_route").inc()
            self._finish(tp, rec.offset)
            return
        jobs = []
        for name in names:
            lane = self.lanes[name]
            if (name, tid) in self.delivered.get(tp.partition, ()):
                m.deliveries.labels(name, "already_delivered").inc()
                continue
            if lane.disabled:
                jobs.append(self._dead(name, rec, where, "endpoint_disabled", trigger, 0, None,
                                       "the endpoint answered 410 Gone earlier"))
            elif lane.pending >= lane.ep.max_pending:
                jobs.append(self._dead(name, rec, where, "backlog_full", trigger, 0, None,
                                       f"{lane.pending} deliveries already waiting (max_pending)"))
            else:
                jobs.append(self._deliver(lane, rec, where, trigger, read_at))
        if jobs:
            self._spawn(tp, rec.offset, jobs)
        else:
            self._finish(tp, rec.offset)

    def _not_for_delivery(self, trigger: dict, rec) -> str | None:
        if dict(rec.headers or ()).get(ORIGIN_HEADER) != LIVE:
            return "not_live"
        if self.cfg.max_age > 0:
            try:
                at = parse_time(trigger.get("time", "")) / 1000.0
            except (TimeError, TypeError, ValueError):
                return "stale"
            if time.time() - at > self.cfg.max_age:
                return "stale"
        return None

    def _spawn(self, tp, offset: int, jobs) -> None:
        self.remaining[(tp, offset)] = len(jobs)
        bucket = self.tasks.setdefault(tp, set())
        for job in jobs:
            t = asyncio.create_task(job)
            bucket.add(t)
            t.add_done_callback(lambda t, tp=tp, offset=offset: self._job_done(t, tp, offset))

    def _job_done(self, task, tp, offset) -> None:
        self.tasks.get(tp, set()).discard(task)
        if task.cancelled():
            return                      # revoked or stopping: not finished, read again later
        if task.exception() is not None:
            log.error("delivery task failed: %r (the trigger is read again after a restart)", task.exception())
            return
        key = (tp, offset)
        if key in self.remaining:
            self.remaining[key] -= 1
            if self.remaining[key] == 0:
                del self.remaining[key]
                self._finish(tp, offset)

    def _finish(self, tp, offset: int) -> None:
        self.offsets.finish(tp, offset)
        self.room.set()

    # -- delivery -----------------------------------------------------------------------------------------------

    async def _deliver(self, lane: Lane, rec, where: dict, trigger: dict, read_at: float) -> None:
        ep, m = lane.ep, self.metrics
        lane.pending += 1
        m.pending.labels(ep.name).inc()
        try:
            first = time.time()
            attempt, status, error = 0, None, None
            while True:
                if lane.disabled:
                    await self._dead(ep.name, rec, where, "endpoint_disabled", trigger, attempt, status,
                                     "the endpoint answered 410 Gone")
                    return
                attempt += 1
                await lane.limiter.acquire()
                async with lane.slots:
                    status, error, retry_after = await self._post(ep, trigger["id"], rec.value)
                    outcome = policy.classify(status)
                    if outcome == policy.DELIVERED:
                        # still holding the slot: a delivery counts as in flight until it is recorded,
                        # so a crash repeats at most `concurrency` deliveries of an endpoint
                        await self._record_delivered(ep.name, trigger["id"], where["partition"])
                m.attempts.labels(ep.name, result_of(status, error)).inc()
                if outcome == policy.DELIVERED:
                    m.deliveries.labels(ep.name, "delivered").inc()
                    m.latency.labels(ep.name).observe(time.monotonic() - read_at)
                    return
                if outcome == policy.DISABLE:
                    if not lane.disabled:
                        lane.disabled = True
                        m.disabled.labels(ep.name).set(1)
                        m.disables.labels(ep.name).inc()
                        log.error("endpoint %s answered 410 Gone: disabled until restart; its triggers go to %s",
                                  ep.name, topics.TRIGGERS_DEADLETTER)
                    await self._dead(ep.name, rec, where, "endpoint_gone", trigger, attempt, status, "410 Gone")
                    return
                if outcome == policy.REJECTED:
                    await self._dead(ep.name, rec, where, "rejected", trigger, attempt, status, error)
                    return
                now = time.time()
                wait, why = policy.next_wait(ep, attempt, first, now, policy.retry_after_seconds(retry_after, now),
                                             self.rng.random())
                if wait is None:
                    await self._dead(ep.name, rec, where, "retries_exhausted", trigger, attempt, status,
                                     f"{error or status}; {why}")
                    return
                m.retries.labels(ep.name).inc()
                await asyncio.sleep(wait)
        finally:
            lane.pending -= 1
            m.pending.labels(ep.name).dec()

    async def _post(self, ep, msg_id: str, body: bytes):
        """One attempt: (status or None, error text or None, Retry-After header or None)."""
        headers = {**ep.headers, "content-type": CONTENT_TYPE,
                   **signing.headers(ep.secrets, msg_id, int(time.time()), body)}
        try:
            async with self.http.post(ep.url, data=body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=ep.timeout)) as r:
                await r.read()
                return r.status, None if r.status < 300 else f"HTTP {r.status}", r.headers.get("retry-after")
        except TimeoutError:
            return None, "timeout", None
        except aiohttp.ClientError as e:
            return None, f"{type(e).__name__}: {e}", None

    async def _record_delivered(self, endpoint: str, tid: str, partition: int) -> None:
        self.delivered.setdefault(partition, Delivered(self.cfg.delivered_memory)).add((endpoint, tid))
        value = orjson.dumps({"endpoint": endpoint, "trigger_id": tid, "delivered_at": round(time.time(), 3)})
        await (await self.producer.send(topics.DELIVERED, value, key=tid.encode(), partition=partition))

    async def _dead(self, endpoint, rec, where, reason, trigger, attempts, status, error) -> None:
        body = {"reason": reason, "endpoint": endpoint, "attempts": attempts, "last_status": status,
                "last_error": error, "trigger_id": trigger.get("id") if trigger else None, **where,
                "dead_lettered_at": round(time.time(), 3)}
        if trigger is not None:
            body["trigger"] = trigger
        else:
            body["raw"] = rec.value.decode("utf-8", "replace") if rec.value is not None else None
        self.metrics.deadletters.labels(endpoint or "-", reason).inc()
        if endpoint:
            self.metrics.deliveries.labels(endpoint, "dead_lettered").inc()
        log.warning("dead letter: %s (endpoint %s, partition %s offset %s, %s attempt(s)%s)", reason, endpoint,
                    where["partition"], where["offset"], attempts, f", last: {error}" if error else "")
        await (await self.producer.send(topics.TRIGGERS_DEADLETTER, orjson.dumps(body), key=rec.key,
                                        partition=where["partition"],
                                        headers=[("content-type", b"application/json")]))

    async def _drain(self, grace: float) -> None:
        pending = [t for ts in self.tasks.values() for t in ts]
        if pending:
            log.info("stopping: waiting up to %.0f s for %d deliveries", grace, len(pending))
            _done, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still)

    # -- web ------------------------------------------------------------------------------------------------------

    async def _serve(self) -> web.AppRunner:
        app = web.Application()

        async def metrics(_request):
            return web.Response(body=generate_latest(self.metrics.registry),
                                headers={"content-type": CONTENT_TYPE_LATEST})

        async def health(_request):
            return web.json_response({"status": "ok"})

        async def ready(_request):
            body = {"ready": self.ready, "in_flight": self.offsets.unfinished(),
                    "endpoints": {n: {"pending": l.pending, "disabled": l.disabled} for n, l in self.lanes.items()}}
            return web.json_response(body, status=200 if self.ready else 503)

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.web_host, self.web_port).start()
        return runner


class _Listener(ConsumerRebalanceListener):
    def __init__(self, d: Dispatcher):
        self.d = d

    async def on_partitions_revoked(self, revoked):
        await self.d.revoked(revoked)

    async def on_partitions_assigned(self, assigned):
        await self.d.assigned(assigned)


def run(cfg, broker: str, web_host: str, web_port: int, allow_replayed: bool, loglevel: str = "info") -> int:
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(Dispatcher(cfg, broker, web_host, web_port, allow_replayed).run())
