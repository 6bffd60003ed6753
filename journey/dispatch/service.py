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

Hostile input: a record that is not a routable trigger (``records``) is
dead-lettered (``not_a_trigger``) and counted, never fatal. Redirects are
never followed (a 3xx is a failed attempt). Of an answer only a bounded prefix
(``RESPONSE_PREFIX``) is read, for the error text; the rest is never
buffered, and bodies are not decompressed. An exception inside a delivery is
a failed attempt (retried, then dead-lettered); one that escapes a delivery
task re-runs it a bounded number of times, then dead-letters it; only when
the dead letter itself cannot be written does the dispatcher stop (exit 1),
so the unfinished record is read again by its successor instead of holding
the partition's commit forever. URLs are shown redacted (``redact``) and
error texts are scrubbed of the endpoint URL's credentials and query.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
import time

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.timeutil import TimeError, parse_time
from ..io import topics
from ..io.connection import PLAINTEXT, KafkaConnectFailed, KafkaConnection
from ..io.kafka import bootstrap, read_to_end
from . import policy, signing
from .ledger import Delivered, Offsets
from .metrics import INTERNAL, DispatchMetrics, result_of
from .records import InvalidTrigger, parse_trigger
from .redact import redact_url, scrub

log = logging.getLogger("journey.dispatch")

ORIGIN_HEADER = "journey-origin"
LIVE = b"live"
CONTENT_TYPE = "application/cloudevents+json"
COMMIT_EVERY = 0.5
RESPONSE_PREFIX = 4096        # bytes of an answer read at most (for the error text); the rest is not read
PREFIX_WAIT = 2.0             # seconds the prefix may take to arrive (within the attempt's timeout)
ERROR_TEXT = 1000             # characters of an answer shown in an error text at most
DEAD_LETTER_MAX = 512 * 1024  # a larger dead letter carries a prefix of the record (raw) instead
RAW_PREFIX = 64 * 1024        # characters of such a record kept
GUARD_RUNS = 3                # runs of a delivery task that raised before it is dead-lettered
GUARD_WAIT = 1.0              # seconds before the second run; doubles


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
                 allow_replayed: bool = False, rng: random.Random | None = None, conn: KafkaConnection = PLAINTEXT):
        self.cfg, self.broker = cfg, broker
        self.conn = conn                      # security settings of every Kafka client it opens
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
        self.failed = False                   # a dead letter could not be written: stop, exit 1

    # -- Kafka ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stopping.set)
            except (NotImplementedError, RuntimeError):
                pass
        servers = bootstrap(self.broker)
        security = self.conn.client_options()
        self.producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5, **security)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=servers, group_id=self.cfg.group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=500, fetch_max_wait_ms=100, **security)
        # no cookies kept between requests, no proxy or netrc from the environment, bodies not decompressed
        # (only a prefix is read, for the error text; a compressed answer must not inflate in memory)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          headers={"user-agent": "journey-dispatch", "accept-encoding": "identity"},
                                          cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                                          trust_env=False)
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
        if self.failed:
            log.error("stopped because a dead letter could not be written; the unfinished triggers are read "
                      "again when a dispatcher starts")
            return 1
        return 0

    async def _topics(self) -> None:
        """Create the dispatcher's topics (and any other missing catalogue topic) with the partition
        count of journey.triggers: a delivery record goes to its trigger's partition number."""
        from aiokafka.admin import AIOKafkaAdminClient

        from ..io.errors import what
        from ..io.kafka import _partition_counts, broker_wait, ensure_topics, start_client

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(self.broker), **self.conn.client_options())
        try:
            await start_client(admin.start, broker_wait(), self.conn, self.broker, lambda: print(
                f"journey dispatch: waiting for the broker at {self.broker} (up to {broker_wait():g} s) ...",
                file=sys.stderr))
        except KafkaConnectFailed as e:
            raise SystemExit(f"journey dispatch: {e}") from None
        except Exception as e:
            raise SystemExit(f"journey dispatch: {what(e)}. Is a Kafka broker listening at {self.broker}? Give "
                             "--broker URL (or JOURNEY_BROKER)") from None
        try:
            counts = await _partition_counts(admin)
        finally:
            await admin.close()
        status = await ensure_topics(self.broker, counts.get(topics.TRIGGERS, topics.PARTITIONS), conn=self.conn)
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
                             fetch_max_wait_ms=100, **self.conn.client_options())
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
                if not batch and await read_to_end(c, tps):
                    break
            else:
                log.warning("reading %s did not reach its end in 60 s; some delivered triggers may be sent "
                            "again (with the same webhook-id)", topics.DELIVERED)
            log.info("partitions %s: %d delivered trigger ids read back", sorted(partitions), n)
        finally:
            await c.stop()

    # -- one record --------------------------------------------------------------------------------------------

    def _accept(self, tp, rec) -> None:
        """Plan the deliveries of one record; never raises (a record cannot stop the dispatcher)."""
        self.metrics.read.inc()
        self.offsets.read(tp, rec.offset)
        where = {"topic": tp.topic, "partition": tp.partition, "offset": rec.offset}
        try:
            jobs = self._plan(tp, rec, where, time.monotonic())
        except Exception as e:      # a bug in planning: the record goes to the dead letter, the reading goes on
            self.metrics.internal.labels("-").inc()
            error = f"{INTERNAL}: {type(e).__name__}: {self._scrub(None, e)}"
            log.error("record at partition %s offset %s could not be planned: %s", tp.partition, rec.offset, error)
            jobs = [self._job(None, lambda: self._dead(None, rec, where, "not_a_trigger", None, 0, None, error))]
        if jobs:
            self._spawn(tp, rec.offset, jobs)
        else:
            self._finish(tp, rec.offset)

    def _job(self, endpoint, make, last_resort=None):
        """A delivery job: ``make()`` returns the coroutine (it may run again, see :meth:`_guarded`);
        ``last_resort(error)`` the dead letter written when every run raised."""
        return endpoint, make, last_resort

    def _plan(self, tp, rec, where, read_at) -> list:
        """The jobs of one record; empty when it is finished already (skipped, or delivered before)."""
        m = self.metrics
        try:
            trigger = parse_trigger(rec.value)
        except InvalidTrigger as e:
            m.invalid.labels(e.problem).inc()
            detail = e.detail
            return [self._job(None, lambda: self._dead(None, rec, where, "not_a_trigger", None, 0, None, detail))]
        tid = trigger["id"]
        if not self.allow_replayed:
            why = self._not_for_delivery(trigger, rec)
            if why:
                m.skipped.labels(why).inc()
                return []
        names = self.cfg.route(trigger)
        if not names:
            m.skipped.labels("no_route").inc()
            return []
        jobs = []
        for name in names:
            lane = self.lanes[name]
            if (name, tid) in self.delivered.get(tp.partition, ()):
                m.deliveries.labels(name, "already_delivered").inc()
                continue

            def last_resort(error, name=name):
                return self._dead(name, rec, where, "retries_exhausted", trigger, 0, None, error)
            if lane.disabled:
                jobs.append(self._job(name, lambda name=name: self._dead(
                    name, rec, where, "endpoint_disabled", trigger, 0, None, "the endpoint answered 410 Gone earlier")))
            elif lane.pending >= lane.ep.max_pending:
                pending = lane.pending
                jobs.append(self._job(name, lambda name=name, pending=pending: self._dead(
                    name, rec, where, "backlog_full", trigger, 0, None,
                    f"{pending} deliveries already waiting (max_pending)")))
            else:
                jobs.append(self._job(name, lambda lane=lane: self._deliver(lane, rec, where, trigger, read_at),
                                      last_resort))
        return jobs

    def _not_for_delivery(self, trigger: dict, rec) -> str | None:
        if dict(rec.headers or ()).get(ORIGIN_HEADER) != LIVE:
            return "not_live"
        if self.cfg.max_age > 0:
            try:
                at = parse_time(trigger.get("time", "")) / 1000.0
            except (TimeError, TypeError, ValueError, OverflowError):
                return "stale"
            if time.time() - at > self.cfg.max_age:
                return "stale"
        return None

    def _spawn(self, tp, offset: int, jobs) -> None:
        self.remaining[(tp, offset)] = len(jobs)
        bucket = self.tasks.setdefault(tp, set())
        for endpoint, make, last_resort in jobs:
            t = asyncio.create_task(self._guarded(endpoint, make, last_resort))
            bucket.add(t)
            t.add_done_callback(lambda t, tp=tp, offset=offset: self._job_done(t, tp, offset))

    async def _guarded(self, endpoint, make, last_resort) -> None:
        """Run a job so that it ends finished: an exception re-runs it (at most ``GUARD_RUNS`` runs, waiting
        1 s, 2 s ...), then ``last_resort`` dead-letters it; when that fails too (Kafka refuses the dead
        letter), the dispatcher stops and the record stays uncommitted for its successor."""
        error = None
        for run in range(GUARD_RUNS):
            try:
                await make()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.internal.labels(endpoint or "-").inc()
                error = f"{INTERNAL}: {type(e).__name__}: {self._scrub(endpoint, e)}"
                log.error("a delivery to %s raised (run %d of %d): %s", endpoint or "the dead letter", run + 1,
                          GUARD_RUNS, error)
                if run + 1 < GUARD_RUNS:
                    await asyncio.sleep(GUARD_WAIT * 2 ** run)
        if last_resort is not None:
            try:
                await last_resort(f"{error}; gave up after {GUARD_RUNS} runs")
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = f"{type(e).__name__}: {self._scrub(endpoint, e)}"
        log.critical("could not write a dead letter (%s): stopping, so that the unfinished record is read "
                     "again instead of holding its partition's commit", error)
        self.failed = True
        self.stopping.set()
        raise asyncio.CancelledError    # not finished: its offset is not committed

    def _scrub(self, endpoint, text) -> str:
        lane = self.lanes.get(endpoint) if endpoint else None
        hidden = lane.ep.hidden if lane else tuple(p for ln in self.lanes.values() for p in ln.ep.hidden)
        return scrub(text, hidden)

    def _job_done(self, task, tp, offset) -> None:
        self.tasks.get(tp, set()).discard(task)
        if task.cancelled():
            return                      # revoked or stopping: not finished, read again later
        if task.exception() is not None:    # cannot happen (_guarded); if it does, stop rather than hold the commit
            log.critical("delivery task failed: %s; stopping (the trigger is read again after a restart)",
                         self._scrub(None, repr(task.exception())))
            self.failed = True
            self.stopping.set()
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
        """Attempts until delivered or dead-lettered."""
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
                log.debug("endpoint %s, trigger %s: attempt %d failed (%s); next in %.1f s", ep.name,
                          trigger["id"], attempt, error or status, wait)
                await asyncio.sleep(wait)
        finally:
            lane.pending -= 1
            m.pending.labels(ep.name).dec()

    async def _post(self, ep, msg_id: str, body: bytes):
        """One attempt: (status or None, error text or None, Retry-After header or None). Never raises but
        for cancellation: an exception is a failed attempt (``internal error: ...``), retried like a
        connection error. Redirects are not followed; at most ``RESPONSE_PREFIX`` bytes of the answer are
        read; error texts are scrubbed of the URL's credentials and query."""
        try:
            headers = {**ep.headers, "content-type": CONTENT_TYPE,
                       **signing.headers(ep.secrets, msg_id, int(time.time()), body)}
            async with self.http.post(ep.url, data=body, headers=headers, allow_redirects=False,
                                      timeout=aiohttp.ClientTimeout(total=ep.timeout)) as r:
                status = r.status
                # the answer's status decides; of its body only a prefix is read (for the error text), within
                # PREFIX_WAIT: a body that never ends changes nothing
                prefix = await _read_prefix(r, RESPONSE_PREFIX, min(PREFIX_WAIT, ep.timeout))
                if not r.content.at_eof():
                    r.close()           # the rest is never read: drop the connection instead of draining it
                if 200 <= status < 300:
                    return status, None, None
                if 300 <= status < 400:
                    location = r.headers.get("location")
                    to = f" to {redact_url(scrub(location, ep.hidden))}" if location else ""
                    return status, f"HTTP {status}: a redirect{to}, not followed (a redirect is not a delivery)", None
                said = _answer_text(prefix)
                error = f"HTTP {status}" + (f": {scrub(said, ep.hidden)}" if said else "")
                return status, error, r.headers.get("retry-after")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return None, "timeout", None
        except aiohttp.ClientError as e:
            return None, f"{type(e).__name__}: {scrub(e, ep.hidden)}", None
        except Exception as e:
            self.metrics.internal.labels(ep.name).inc()
            error = f"{INTERNAL}: {type(e).__name__}: {scrub(e, ep.hidden)}"
            log.error("endpoint %s: the send failed inside the dispatcher: %s", ep.name, error)
            return None, error, None

    async def _record_delivered(self, endpoint: str, tid: str, partition: int) -> None:
        """Remember a 2xx; when journey.dispatch.delivered does not take it, the delivery still counts (the
        receiver has it), only a crash before the commit could then send it again (same webhook-id)."""
        self.delivered.setdefault(partition, Delivered(self.cfg.delivered_memory)).add((endpoint, tid))
        value = orjson.dumps({"endpoint": endpoint, "trigger_id": tid, "delivered_at": round(time.time(), 3)})
        try:
            await (await self.producer.send(topics.DELIVERED, value, key=tid.encode(), partition=partition))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.metrics.internal.labels(endpoint).inc()
            log.warning("endpoint %s: delivered, but %s did not take the record (%s: %s); after a crash before "
                        "the commit it may be sent again", endpoint, topics.DELIVERED, type(e).__name__,
                        self._scrub(endpoint, e))

    async def _dead(self, endpoint, rec, where, reason, trigger, attempts, status, error) -> None:
        body = {"reason": reason, "endpoint": endpoint, "attempts": attempts, "last_status": status,
                "last_error": error, "trigger_id": trigger.get("id") if trigger else None, **where,
                "dead_lettered_at": round(time.time(), 3)}
        if trigger is not None:
            body["trigger"] = trigger
        else:
            body["raw"] = rec.value.decode("utf-8", "replace") if rec.value is not None else None
        value = orjson.dumps(body)
        if len(value) > DEAD_LETTER_MAX:   # the dead letter must fit a Kafka message: keep a prefix
            raw = rec.value.decode("utf-8", "replace") if rec.value is not None else ""
            body.pop("trigger", None)
            body.update(raw=raw[:RAW_PREFIX], raw_truncated=True)
            value = orjson.dumps(body)
        log.warning("dead letter: %s (endpoint %s, partition %s offset %s, %s attempt(s)%s)", reason, endpoint,
                    where["partition"], where["offset"], attempts, f", last: {error}" if error else "")
        await (await self.producer.send(topics.TRIGGERS_DEADLETTER, value, key=rec.key,
                                        partition=where["partition"],
                                        headers=[("content-type", b"application/json")]))
        self.metrics.deadletters.labels(endpoint or "-", reason).inc()
        if endpoint:
            self.metrics.deliveries.labels(endpoint, "dead_lettered").inc()

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


async def _read_prefix(r, limit: int, wait: float) -> bytes:
    """At most ``limit`` bytes of a response body, as they arrive within ``wait`` seconds; what could not be
    read in time (or at all) is left out. aiohttp holds at most its read buffer (64 KiB) of the rest, which
    is never read."""
    buf = bytearray()
    try:
        async with asyncio.timeout(wait):
            for _ in range(limit):      # each read returns at least one byte or ends the loop
                if len(buf) >= limit:
                    break
                chunk = await r.content.read(limit - len(buf))
                if not chunk:
                    break
                buf += chunk
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return bytes(buf)


def _answer_text(prefix: bytes) -> str:
    """A receiver's answer as one short printable line for logs and dead letters."""
    text = prefix.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT else text[:ERROR_TEXT] + "..."


class _Listener(ConsumerRebalanceListener):
    def __init__(self, d: Dispatcher):
        self.d = d

    async def on_partitions_revoked(self, revoked):
        await self.d.revoked(revoked)

    async def on_partitions_assigned(self, assigned):
        await self.d.assigned(assigned)


def run(cfg, broker: str, web_host: str, web_port: int, allow_replayed: bool, loglevel: str = "info",
        conn: KafkaConnection = PLAINTEXT) -> int:
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(Dispatcher(cfg, broker, web_host, web_port, allow_replayed, conn=conn).run())
