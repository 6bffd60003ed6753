"""``journey intake``: Segment's HTTP Tracking API in front of the source topics.

One aiohttp server and one Kafka producer (``acks=all``). A request is read
(its compressed size bounded), authenticated (HTTP Basic with the write key as
user name, or the body's ``writeKey``), decoded and split by
:mod:`journey.intake.segment`; each message is checked by the worker's own
intake. Valid messages go to the source topic of their type, keyed by customer
(else visitor) id; invalid ones to ``journey.deadletter`` with their reason.
The answer ``200 {"success": true, "accepted": N, "rejected": M}`` is sent
only once Kafka has acknowledged every record of the request; when it has not
within ``ack_timeout`` (or the producer cannot reach Kafka at all), ``503``
with ``Retry-After``: the SDKs retry, and a message that reached Kafka anyway
is a duplicate the worker recognises by ``messageId``. More than
``max_in_flight`` bytes of requests being worked on: ``429`` with
``Retry-After``. Any other answer is ``{"success": false, "code": ..., "message": ...}`` (and
``error``, the same text): Segment's shape, which the SDKs read (rudder-sdk-python takes an answer
without ``code`` and ``message`` for a network failure and retries it, a wrong write key for minutes).
Nothing of a write key or a body is logged or counted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..io import topics
from ..io.connection import PLAINTEXT, KafkaConnection
from ..io.kafka import bootstrap, broker_wait, ensure_topics, start_client
from . import segment
from .keys import WriteKeys, basic_user
from .metrics import IntakeMetrics

log = logging.getLogger("journey.intake")

JSON = [("content-type", b"application/json")]
RETRY_BUSY = 1        # seconds, Retry-After of a 429
RETRY_KAFKA = 5       # seconds, Retry-After of a 503
READ_TIMEOUT = 30.0   # seconds to send a request body
PROBE_EVERY = 2.0     # seconds between two checks that Kafka answers
# the ``code`` of an error answer, by status
CODES = {400: "bad_request", 401: "invalid_write_key", 408: "request_timeout", 429: "too_many_requests",
         500: "internal_error", 503: "unavailable"}
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
        "Access-Control-Max-Age": "86400"}


class Intake:
    def __init__(self, broker: str, keys: WriteKeys, host: str = "127.0.0.1", port: int = 8088,
                 ack_timeout: float = 5.0, max_in_flight: int = 64 << 20, create_topics: bool = True,
                 conn: KafkaConnection = PLAINTEXT):
        self.broker = broker
        self.keys = keys
        self.host = host
        self.port = port
        self.ack_timeout = ack_timeout
        self.max_in_flight = max_in_flight
        self.create_topics = create_topics
        self.conn = conn
        self.metrics = IntakeMetrics()
        self.metrics.in_flight_limit.set(max_in_flight)
        self.metrics.write_keys.set_function(keys.count)   # read at each scrape: a rotation shows
        self.in_flight = 0
        self.kafka_up = False
        self.stopping = False
        self.producer = None
        self.runner = None
        self.bound_port = None
        # (topic, partition) -> the offset after the last record Kafka acknowledged (for `journey demo`)
        self.ends: dict[tuple[str, int], int] = {}
        self.latest = None   # the latest event time acknowledged

    # -- life ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        if self.create_topics:
            await ensure_topics(self.broker, timeout=broker_wait(), conn=self.conn)
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap(self.broker), acks="all", linger_ms=2,
                                         max_batch_size=1 << 20, max_request_size=8 << 20,
                                         **self.conn.client_options())
        await start_client(self.producer.start, broker_wait(), self.conn, self.broker)
        missing = [t for t in (*topics.SOURCES, topics.DEADLETTER) if t not in await self._topics()]
        if missing:
            await self.producer.stop()
            raise MissingTopics(f"the topic(s) {', '.join(missing)} do not exist: create them with `journey topics "
                                f"create` (or start the intake without --no-create-topics)")
        self._up(True)
        app = web.Application(client_max_size=segment.MAX_COMPRESSED)
        for path, name in [*((n, n) for n in segment.ENDPOINTS), *segment.BROWSER.items()]:
            app.router.add_post(f"/v1/{path}", self._handler(name))
            app.router.add_route("OPTIONS", f"/v1/{path}", self._preflight)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        # the raw body: aiohttp would gunzip it itself (and count decompressed bytes against client_max_size,
        # answering 413), where the bounds here are Segment's and the answer 400
        self.runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.bound_port = self.runner.addresses[0][1]
        self._prober = asyncio.create_task(self._probe())
        log.info("listening on http://%s:%d (%d write key(s)); writing to %s", self.host, self.bound_port,
                 len(self.keys.keys), self.broker)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking requests, answer those being worked on, then flush and close the producer."""
        self.stopping = True
        if getattr(self, "_prober", None) is not None:
            self._prober.cancel()
        if self.runner is not None:
            await self.runner.cleanup()   # waits for the handlers still running (each bounded by ack_timeout)
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), grace)
            except Exception as e:  # noqa: BLE001 - stopping: say it, do not hide the exit
                log.warning("stopping: the producer did not close cleanly (%s)", type(e).__name__)

    async def run(self) -> int:
        await self.start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        log.info("stopping: answering the requests being worked on")
        await self.stop()
        return 0

    async def _topics(self) -> set:
        md = await self.producer.client.fetch_all_metadata()
        return set(md.topics())

    def _up(self, up: bool) -> None:
        if up != self.kafka_up:
            if up:
                log.info("Kafka answers: taking requests")
            else:
                log.warning("Kafka does not answer: requests get 503 (the senders retry) until it does")
        self.kafka_up = up
        self.metrics.kafka_up.set(1 if up else 0)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY)
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), PROBE_EVERY * 2)
                self._up(True)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - any failure means: not now
                self._up(False)

    # -- web ----------------------------------------------------------------------------------------------

    async def _health(self, _request):
        return web.json_response({"status": "ok"})

    async def _ready(self, _request):
        ok = self.kafka_up and not self.stopping
        body = {"ready": ok, "kafka": "up" if self.kafka_up else "down", "bytes_in_flight": self.in_flight,
                "max_bytes_in_flight": self.max_in_flight}
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _request):
        return web.Response(body=generate_latest(self.metrics.registry), headers={"content-type": CONTENT_TYPE_LATEST})

    async def _preflight(self, _request):
        return web.Response(status=204, headers=CORS)

    def _handler(self, endpoint: str):
        async def handle(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                status, body, headers = await self._handle(endpoint, request)
            except Exception as e:  # noqa: BLE001 - a request, whatever it holds, is only answered (5xx: retried)
                log.error("a request to /v1/%s failed inside the intake (%s); answered 500", endpoint,
                          type(e).__name__)
                status, body, headers = 500, _error("the intake failed on this request; retry"), {}
            if status != 200:
                body["code"] = CODES.get(status, "error")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            return web.Response(status=status, body=orjson.dumps(body), headers={**headers, **CORS},
                                content_type="application/json")
        return handle

    async def _handle(self, endpoint: str, request: web.Request) -> tuple[int, dict, dict]:
        received = int(time.time() * 1000)
        if self.stopping or not self.kafka_up:
            return 503, _error("Kafka is not reachable from the intake; retry later"), {"Retry-After": str(RETRY_KAFKA)}
        # authenticate before reading a body when the header says who it is
        user = basic_user(request.headers.get("Authorization"))
        if user is not None and not self.keys.valid(user):
            return 401, _error("the write key is not valid"), {"WWW-Authenticate": 'Basic realm="journey"'}
        length = request.content_length
        if length is not None and length > segment.MAX_COMPRESSED:
            return 400, _error(f"the request body is over {segment.MAX_REQUEST // 1024} KB"), {"Connection": "close"}
        if self.in_flight + (length or 0) > self.max_in_flight and self.in_flight > 0:
            # (analytics.js waits X-RateLimit-Reset seconds, the other SDKs Retry-After)
            return 429, _error("too many bytes in flight; retry later"), {"Retry-After": str(RETRY_BUSY),
                                                                           "X-RateLimit-Reset": str(RETRY_BUSY)}
        held = 0
        try:
            try:
                raw = await asyncio.wait_for(_read(request, segment.MAX_COMPRESSED), READ_TIMEOUT)
            except TimeoutError:
                return 408, _error("the request body was not sent in time"), {"Connection": "close"}
            if raw is None:
                return 400, _error(f"the request body is over {segment.MAX_REQUEST // 1024} KB"), \
                    {"Connection": "close"}
            held = len(raw)
            self._hold(held)
            try:
                doc, size = segment.decode(raw, request.headers.get("Content-Encoding"))
            except segment.BadRequest as e:
                return 400, _error(str(e)), {}
            if user is None:
                key = doc.get("writeKey")
                if not self.keys.valid(key):
                    return 401, _error("no valid write key: send it as the HTTP Basic user name or as 'writeKey'"), \
                        {"WWW-Authenticate": 'Basic realm="journey"'}
            try:
                msgs, common = segment.messages(endpoint, doc)
            except segment.BadRequest as e:
                return 400, _error(str(e)), {}
            extra = size * 2    # the decompressed JSON as objects, and the records made of them, roughly
            held += extra
            self._hold(extra)
            for i, m in enumerate(msgs):
                if segment.size_of(m) > segment.MAX_MESSAGE:
                    return 400, _error(f"message {i} is over {segment.MAX_MESSAGE // 1024} KB"), {}
            records = [segment.prepare(m, received, common) for m in msgs]
            return await self._write(endpoint, records, received)
        finally:
            if held:
                self._hold(-held)

    def _hold(self, n: int) -> None:
        self.in_flight += n
        self.metrics.in_flight.set(self.in_flight)

    async def _write(self, endpoint: str, records: list, received: int) -> tuple[int, dict, dict]:
        producer = self.producer
        futures = []
        try:
            async with asyncio.timeout(self.ack_timeout):
                for i, r in enumerate(records):
                    if r.rejected is None:
                        futures.append(await producer.send(r.topic, r.value, key=r.key, timestamp_ms=r.ts))
                    else:
                        futures.append(await producer.send(topics.DEADLETTER,
                                                           segment.deadletter(r, endpoint, i, received),
                                                           headers=JSON))
                acks = await asyncio.gather(*futures)
        except Exception as e:  # noqa: BLE001 - a timeout or any Kafka error: the sender retries
            for f in futures:
                if not f.done():
                    f.add_done_callback(_quiet)
            self.metrics.unacknowledged.inc(len(records))
            log.warning("a request of %d message(s) was answered 503: Kafka did not acknowledge it within %g s "
                        "(%s)", len(records), self.ack_timeout, type(e).__name__)
            return 503, _error("Kafka did not acknowledge the messages in time; retry"), \
                {"Retry-After": str(RETRY_KAFKA)}
        accepted = rejected = 0
        for r, md in zip(records, acks):
            if r.rejected is None:
                accepted += 1
                self.metrics.accepted.labels(r.topic).inc()
                slot = (md.topic, md.partition)
                if md.offset + 1 > self.ends.get(slot, 0):
                    self.ends[slot] = md.offset + 1
                if self.latest is None or r.ts > self.latest:
                    self.latest = r.ts
            else:
                rejected += 1
                self.metrics.rejected.labels(r.rejected).inc()
        return 200, {"success": True, "accepted": accepted, "rejected": rejected}, {}


class MissingTopics(Exception):
    pass


def _error(text: str) -> dict:
    return {"success": False, "error": text, "message": text}


def _quiet(fut) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a late failure of an answered request is not an unhandled error


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body as sent, or None beyond ``limit`` bytes."""
    buf = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            return None


def run(intake: Intake, loglevel: str = "info") -> int:
    level = getattr(logging, loglevel.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the clients' debug lines carry the records themselves (bodies, customer ids): never below info
    for name in ("aiokafka", "aiohttp"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    return asyncio.run(intake.run())
