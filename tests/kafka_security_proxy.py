"""A TLS- and SASL-terminating Kafka proxy for the tests (issue 26): journey against a secured Kafka.

Tansu (the embedded broker) cannot secure its own listener in the version we ship (its SCRAM users
are never stored, PLAIN is not built in, its TLS listener is never used), so this proxy does it in
front of it, the way a real Kafka listener would, for clients we did not write (aiokafka,
librdkafka):

    client --TLS / SASL--> KafkaSecurityProxy (127.0.0.1:port) --plaintext--> Tansu

Tansu must advertise the proxy's address (``EmbeddedBroker(advertised=...)``) so that its Metadata
answers send the clients back through the proxy; ``SecuredKafka`` below starts both that way.

Listener security as in Kafka's ``security.protocol``: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``,
``SASL_SSL``. TLS with a ``ssl.SSLContext`` made by the caller (``SecuredKafka`` makes one from a
trustme CA, optionally requiring client certificates: mTLS). SASL mechanisms ``PLAIN``,
``SCRAM-SHA-256`` and ``SCRAM-SHA-512`` (SCRAM verified server-side by scramp) against the users given
(name -> password), terminated here:

- SaslHandshake (api key 17) v0 and v1. After a v0 handshake the SASL tokens follow raw (a 4-byte
  size and the token, no Kafka request header) as Kafka before 1.0 did; after v1 they come in
  SaslAuthenticate requests.
- SaslAuthenticate (api key 36) v0 to v2 (v2 is a flexible version: request header v2, compact
  fields, tagged fields; its response uses response header v1).
- Wrong credentials: SaslAuthenticate answers SASL_AUTHENTICATION_FAILED (58) with an error
  message, then the connection is closed, as Kafka does (in the raw v0 exchange, where there is no
  way to carry an error, the connection is just closed, as Kafka does too).
- An unknown mechanism: SaslHandshake answers UNSUPPORTED_SASL_MECHANISM (33) with the enabled
  mechanisms, then the connection is closed.
- Before authentication completes only ApiVersions (relayed to the broker), SaslHandshake and
  SaslAuthenticate are accepted: any other request closes the connection.
- ApiVersions answers are rewritten on SASL listeners so they list keys 17 and 36 with the versions
  this proxy serves (clients will not attempt SASL otherwise), whatever the broker lists.

Once authenticated (or at once on PLAINTEXT/SSL listeners) Kafka frames are relayed both ways.
The proxy runs in a daemon thread with its own asyncio loop; ``stats()`` counts connections, TLS
handshakes, authentications and what was refused, for the tests; ``stop()`` closes everything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36

NONE = 0
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

SASL_HANDSHAKE_VERSIONS = (0, 1)
SASL_AUTHENTICATE_VERSIONS = (0, 2)
# the most a client may send before it is authenticated (Kafka's sasl max receive size)
MAX_PRE_AUTH_FRAME = 512 * 1024
MAX_FRAME = 100 * 1024 * 1024


# --- the Kafka wire format, as much of it as this proxy reads and writes -------------------------

class Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated Kafka message")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise ValueError("varint too long")

    def nullable_string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self.take(n).decode("utf-8")

    def bytes32(self) -> bytes:
        n = self.int32()
        return b"" if n < 0 else self.take(n)

    def compact_bytes(self) -> bytes:
        n = self.uvarint() - 1
        return b"" if n < 0 else self.take(n)

    def tagged_fields(self) -> bytes:
        """Skip a tagged-field section; return its raw bytes (to copy it unchanged)."""
        start = self.pos
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())
        return self.data[start:self.pos]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string16(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode("utf-8")
    return struct.pack(">h", len(b)) + b


def compact_nullable_string(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode("utf-8")
    return uvarint(len(b) + 1) + b


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@dataclass
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Reader


def flexible(api_key: int, api_version: int) -> bool:
    """Whether a request uses header v2 (tagged fields): only for the APIs this proxy parses."""
    return {API_VERSIONS: api_version >= 3, API_SASL_AUTHENTICATE: api_version >= 2}.get(api_key, False)


def parse_request(payload: bytes) -> RequestHeader:
    r = Reader(payload)
    api_key, api_version, correlation_id = r.int16(), r.int16(), r.int32()
    client_id = r.nullable_string()  # a non-compact string in header v2 too
    if flexible(api_key, api_version):
        r.tagged_fields()
    return RequestHeader(api_key, api_version, correlation_id, client_id, r)


def sasl_handshake_response(correlation_id: int, error: int, mechanisms) -> bytes:
    """SaslHandshake response v0 and v1 (same layout, response header v0)."""
    body = struct.pack(">hi", error, len(mechanisms)) + b"".join(string16(m) for m in mechanisms)
    return frame(struct.pack(">i", correlation_id) + body)


def sasl_authenticate_response(correlation_id: int, version: int, error: int, message: str | None,
                               auth_bytes: bytes) -> bytes:
    """SaslAuthenticate response v0 to v2 (v2: response header v1 and compact fields)."""
    if version >= 2:
        return frame(struct.pack(">i", correlation_id) + b"\x00" + struct.pack(">h", error)
                     + compact_nullable_string(message) + uvarint(len(auth_bytes) + 1) + auth_bytes
                     + struct.pack(">q", 0) + b"\x00")
    body = struct.pack(">h", error) + string16(message) + struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
    return frame(struct.pack(">i", correlation_id) + body)


def rewrite_api_versions(payload: bytes, version: int, ensure: dict[int, tuple[int, int]],
                         drop: tuple[int, ...] = ()) -> bytes:
    """An ApiVersions response payload (correlation id and body; its response header is v0 in
    every version) with the keys of ``ensure`` listed at those (min, max) versions, added when
    the broker does not list them (and the keys of ``drop`` left out). An error answer (e.g. UNSUPPORTED_VERSION, in v0 layout) is
    returned unchanged."""
    r = Reader(payload)
    correlation_id, error = r.int32(), r.int16()
    if error != NONE:
        return payload
    flex = version >= 3
    count = r.uvarint() - 1 if flex else r.int32()
    entries = {}
    for _ in range(count):
        key, lo, hi = r.int16(), r.int16(), r.int16()
        entries[key] = (lo, hi, r.tagged_fields() if flex else b"")
    rest = r.rest()  # throttle_time_ms (v1+) and the top-level tagged fields (v3+), unchanged
    for key in drop:
        entries.pop(key, None)
    for key, (lo, hi) in ensure.items():
        entries[key] = (lo, hi, b"\x00" if flex else b"")
    out = struct.pack(">ih", correlation_id, error)
    out += uvarint(len(entries) + 1) if flex else struct.pack(">i", len(entries))
    for key in sorted(entries):
        lo, hi, tags = entries[key]
        out += struct.pack(">hhh", key, lo, hi) + tags
    return out + rest


def api_versions_listed(payload: bytes, version: int) -> dict[int, tuple[int, int]]:
    """The (min, max) versions an ApiVersions response payload lists, by api key."""
    r = Reader(payload)
    r.int32()
    if r.int16() != NONE:
        return {}
    flex = version >= 3
    out = {}
    for _ in range(r.uvarint() - 1 if flex else r.int32()):
        key, lo, hi = r.int16(), r.int16(), r.int16()
        if flex:
            r.tagged_fields()
        out[key] = (lo, hi)
    return out


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    if size < 0 or size > limit:
        raise ValueError(f"frame of {size} bytes")
    return await reader.readexactly(size)


# --- SASL mechanisms, server side -------------------------------------------------------------------

class AuthFailed(Exception):
    pass


class PlainServer:
    """SASL PLAIN (RFC 4616): one token ``authzid NUL authcid NUL passwd``, an empty answer."""

    def __init__(self, users: dict[str, str]):
        self.users = users
        self.username: str | None = None

    def step(self, token: bytes) -> tuple[bytes, bool]:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthFailed("Authentication failed: invalid SASL/PLAIN request: expected 3 tokens")
        authzid, user, password = (p.decode("utf-8", "replace") for p in parts)
        if not user or self.users.get(user) != password:
            raise AuthFailed("Authentication failed: Invalid username or password")
        if authzid and authzid != user:
            raise AuthFailed("Authentication failed: Client requested an authorization id that is "
                             "different from username")
        self.username = user
        return b"", True


class ScramServer:
    """SASL SCRAM-SHA-256/512 (RFC 5802, no channel binding, as Kafka): two exchanges, verified by
    scramp against the users' credentials (salted once, when the proxy is made)."""

    def __init__(self, mechanism: str, credentials: dict[str, tuple]):
        import scramp

        self.username: str | None = None
        # scramp's auth_fn: None for an unknown user (refused at the client's first message)
        self._server = scramp.ScramMechanism(mechanism).make_server(credentials.get)
        self._stage = 0
        self._user_in_first: str | None = None

    def step(self, token: bytes) -> tuple[bytes, bool]:
        try:
            text = token.decode("utf-8")
            if self._stage == 0:
                self._stage = 1
                bare = text.split(",", 2)[2] if text.count(",") >= 2 else ""
                attrs = dict(a.split("=", 1) for a in bare.split(",") if "=" in a)
                self._user_in_first = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
                self._server.set_client_first(text)
                return self._server.get_server_first().encode("utf-8"), False
            if self._stage == 1:
                self._stage = 2
                self._server.set_client_final(text)
                final = self._server.get_server_final().encode("utf-8")
                self.username = self._user_in_first
                return final, True
        except AuthFailed:
            raise
        except Exception as e:  # noqa: BLE001 - scramp's errors (bad proof, unknown user, malformed)
            raise AuthFailed(f"Authentication failed during authentication due to invalid credentials "
                             f"with SASL mechanism {self._mechanism_name()}") from e
        raise AuthFailed("Authentication failed: unexpected SASL token after the exchange completed")

    def _mechanism_name(self) -> str:
        return self._server.m.name


# --- the proxy ----------------------------------------------------------------------------------------

@dataclass
class Stats:
    connections: int = 0            # TCP connections accepted
    tls_handshakes: int = 0         # completed
    tls_failures: int = 0           # TLS handshakes that failed (untrusted, plaintext, no client cert)
    tls_errors: list = field(default_factory=list)          # why each failed
    client_certificates: list = field(default_factory=list)  # the subject CN of each client certificate
    authentications: int = 0        # successful SASL authentications
    auth_failures: int = 0          # SASL authentications refused (wrong credentials, bad tokens)
    unsupported_mechanisms: int = 0
    refused_before_auth: int = 0    # connections closed for a request other than ApiVersions/SASL
    api_versions_rewritten: int = 0
    by_mechanism: collections.Counter = field(default_factory=collections.Counter)  # successes
    users: collections.Counter = field(default_factory=collections.Counter)         # successes
    failed_users: list = field(default_factory=list)
    handshake_versions: collections.Counter = field(default_factory=collections.Counter)
    authenticate_versions: collections.Counter = field(default_factory=collections.Counter)
    api_versions_versions: collections.Counter = field(default_factory=collections.Counter)
    raw_sasl_tokens: int = 0        # tokens exchanged without SaslAuthenticate (after a v0 handshake)
    relayed: collections.Counter = field(default_factory=collections.Counter)  # by api key, after auth
    upstream_failures: int = 0

    def copy(self) -> Stats:
        return Stats(**{k: (type(v)(v) if isinstance(v, (list, collections.Counter)) else v)
                        for k, v in self.__dict__.items()})


class KafkaSecurityProxy:
    def __init__(self, upstream: tuple[str, int] | None = None, *, security_protocol: str = "SASL_SSL",
                 ssl_context: ssl.SSLContext | None = None, users: dict[str, str] | None = None,
                 mechanisms=MECHANISMS, handshake_max_version: int = 1, host: str = "127.0.0.1",
                 port: int = 0, timeout: float = 10.0, scram_iterations: int = 4096,
                 hide_broker_apis: tuple[int, ...] = ()):
        """``hide_broker_apis``: api keys dropped from the broker's ApiVersions answers before the
        SASL ones are ensured, to act out a broker that does not list SaslHandshake/SaslAuthenticate
        (Tansu does list them) so that the rewrite that adds them is exercised by real clients."""
        if security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {SECURITY_PROTOCOLS}")
        self.tls = security_protocol in ("SSL", "SASL_SSL")
        self.sasl = security_protocol.startswith("SASL_")
        if self.tls and ssl_context is None:
            raise ValueError(f"{security_protocol} needs a server ssl_context")
        unknown = set(mechanisms) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms {sorted(unknown)}")
        self.security_protocol = security_protocol
        self.upstream = upstream
        self.ssl_context = ssl_context
        self.users = dict(users or {})
        self.mechanisms = list(mechanisms)
        self.handshake_max_version = handshake_max_version
        self.hide_broker_apis = tuple(hide_broker_apis)
        self.host, self.port = host, port
        self.timeout = timeout  # bounds the TLS handshake, the upstream connect, each pre-auth read
        self._stats = Stats()
        self._lock = threading.Lock()
        self._scram = {}
        if self.sasl:
            import scramp

            for mech in self.mechanisms:
                if mech.startswith("SCRAM-"):
                    m = scramp.ScramMechanism(mech)
                    self._scram[mech] = {u: m.make_auth_info(p, iteration_count=scram_iterations)
                                         for u, p in self.users.items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- life cycle (called from the test's thread) ---

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> KafkaSecurityProxy:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"kafka-proxy-{self.port}",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the proxy's thread did not stop within {timeout:.0f} s")
        loop.close()

    def stats(self) -> Stats:
        with self._lock:
            return self._stats.copy()

    def wait_idle(self, timeout: float = 5.0) -> Stats:
        """The stats once every connection's handler has ended (a client that gave up may be done
        before the proxy has seen the end of its connection)."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self._tasks)} proxy connections still open after {timeout:.0f} s")
            time.sleep(0.02)
        return self.stats()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _count(self, **kw):
        with self._lock:
            for k, v in kw.items():
                cur = getattr(self._stats, k)
                if isinstance(cur, collections.Counter):
                    cur[v] += 1
                elif isinstance(cur, list):
                    cur.append(v)
                else:
                    setattr(self._stats, k, cur + v)

    # --- in the proxy's loop ---

    async def _listen(self):
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self):
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        self._count(connections=1)
        up_writer = None
        try:
            if self.tls:
                try:
                    await writer.start_tls(self.ssl_context, ssl_handshake_timeout=self.timeout)
                except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as e:
                    self._count(tls_failures=1, tls_errors=f"{type(e).__name__}: {e}")
                    return
                self._count(tls_handshakes=1)
                peer = writer.get_extra_info("peercert")
                if peer:
                    cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "")
                    self._count(client_certificates=cn or str(peer.get("subjectAltName")))
            if self.upstream is None:
                raise RuntimeError("no upstream broker set")
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream),
                                                              self.timeout)
            except (TimeoutError, OSError):
                self._count(upstream_failures=1)
                return
            if self.sasl and not await self._authenticate(reader, writer, up_reader, up_writer):
                return
            await self._relay(reader, writer, up_reader, up_writer)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio 3.11's server callback reports a cancelled handler)
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 1)

    async def _api_versions(self, payload: bytes, req: RequestHeader, writer, up_reader, up_writer):
        """Relay one ApiVersions request and its answer, rewritten to list the SASL APIs."""
        self._count(api_versions_versions=req.api_version)
        up_writer.write(frame(payload))
        await up_writer.drain()
        answer = await asyncio.wait_for(read_frame(up_reader, MAX_FRAME), self.timeout)
        writer.write(frame(self._rewrite(answer, req.api_version)))
        await writer.drain()

    def _rewrite(self, answer: bytes, version: int) -> bytes:
        if self.hide_broker_apis:
            answer = rewrite_api_versions(answer, version, {}, drop=self.hide_broker_apis)
        ensure = {API_SASL_HANDSHAKE: (SASL_HANDSHAKE_VERSIONS[0], self.handshake_max_version),
                  API_SASL_AUTHENTICATE: SASL_AUTHENTICATE_VERSIONS}
        listed = api_versions_listed(answer, version)
        if not listed or all(listed.get(k) == v for k, v in ensure.items()):
            return answer  # an error answer, or the broker lists the SASL APIs as served here
        self._count(api_versions_rewritten=1)
        return rewrite_api_versions(answer, version, ensure)

    def _mechanism(self, name: str):
        if name == "PLAIN":
            return PlainServer(self.users)
        return ScramServer(name, self._scram[name])

    async def _authenticate(self, reader, writer, up_reader, up_writer) -> bool:
        """The pre-authentication exchange: True once a SASL authentication succeeded, False when the
        connection is to be closed (whatever was owed to the client was sent first)."""
        mech = None           # the mechanism chosen by SaslHandshake
        mech_name = None
        raw = False           # a v0 handshake: raw tokens follow
        while True:
            payload = await asyncio.wait_for(read_frame(reader, MAX_PRE_AUTH_FRAME), self.timeout)
            if raw:
                self._count(raw_sasl_tokens=1)
                try:
                    answer, done = mech.step(payload)
                except AuthFailed:
                    self._count(auth_failures=1, failed_users=mech_name)
                    return False  # Kafka closes the connection: the raw exchange cannot carry an error
                writer.write(frame(answer))
                await writer.drain()
                if done:
                    self._count(authentications=1, by_mechanism=mech_name, users=mech.username)
                    return True
                continue
            req = parse_request(payload)
            if req.api_key == API_VERSIONS:
                await self._api_versions(payload, req, writer, up_reader, up_writer)
            elif req.api_key == API_SASL_HANDSHAKE and mech is None:
                if req.api_version > self.handshake_max_version:
                    self._count(refused_before_auth=1)
                    return False
                self._count(handshake_versions=req.api_version)
                name = req.body.nullable_string() or ""
                if name not in self.mechanisms:
                    self._count(unsupported_mechanisms=1)
                    writer.write(sasl_handshake_response(req.correlation_id, UNSUPPORTED_SASL_MECHANISM,
                                                         self.mechanisms))
                    await writer.drain()
                    return False
                mech, mech_name, raw = self._mechanism(name), name, req.api_version == 0
                writer.write(sasl_handshake_response(req.correlation_id, NONE, self.mechanisms))
                await writer.drain()
            elif req.api_key == API_SASL_AUTHENTICATE and mech is not None \
                    and req.api_version <= SASL_AUTHENTICATE_VERSIONS[1]:
                self._count(authenticate_versions=req.api_version)
                token = req.body.compact_bytes() if req.api_version >= 2 else req.body.bytes32()
                try:
                    answer, done = mech.step(token)
                except AuthFailed as e:
                    self._count(auth_failures=1, failed_users=mech_name)
                    writer.write(sasl_authenticate_response(req.correlation_id, req.api_version,
                                                            SASL_AUTHENTICATION_FAILED, str(e), b""))
                    await writer.drain()
                    return False
                writer.write(sasl_authenticate_response(req.correlation_id, req.api_version, NONE, None,
                                                        answer))
                await writer.drain()
                if done:
                    self._count(authentications=1, by_mechanism=mech_name, users=mech.username)
                    return True
            else:
                # anything else before authentication (a SaslAuthenticate before SaslHandshake, a
                # second SaslHandshake, any other API) closes the connection, as Kafka does
                self._count(refused_before_auth=1)
                return False

    async def _relay(self, reader, writer, up_reader, up_writer):
        """Kafka frames both ways until either side closes; ApiVersions answers rewritten on SASL
        listeners (a client may ask again after authenticating)."""
        api_versions: dict[int, int] = {}  # correlation id -> ApiVersions request version

        async def client_to_broker():
            while True:
                payload = await read_frame(reader, MAX_FRAME)
                api_key, api_version, correlation_id = struct.unpack(">hhi", payload[:8])
                if self.sasl and api_key == API_VERSIONS:
                    api_versions[correlation_id] = api_version
                self._count(relayed=api_key)
                up_writer.write(frame(payload))
                await up_writer.drain()

        async def broker_to_client():
            while True:
                payload = await read_frame(up_reader, MAX_FRAME)
                correlation_id = struct.unpack(">i", payload[:4])[0]
                if correlation_id in api_versions:
                    payload = self._rewrite(payload, api_versions.pop(correlation_id))
                writer.write(frame(payload))
                await writer.drain()

        tasks = [asyncio.ensure_future(client_to_broker()), asyncio.ensure_future(broker_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# --- a secured Kafka for a test: a CA, the proxy, Tansu advertising the proxy ---------------------------

class SecuredKafka:
    """Tansu behind a ``KafkaSecurityProxy`` on 127.0.0.1, with a fresh trustme CA whose server
    certificate is for 127.0.0.1 and localhost. ``mtls``: the listener requires a client certificate
    signed by the CA. ``bootstrap`` is the proxy's host:port, the only address clients see."""

    def __init__(self, security_protocol: str = "SASL_SSL", *, users: dict[str, str] | None = None,
                 mtls: bool = False, tmpdir: str | None = None, **proxy_kw):
        import trustme

        self.security_protocol = security_protocol
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client_cert = self.ca.issue_cert("journey-test-client", common_name="journey-test-client")
        ctx = None
        if security_protocol in ("SSL", "SASL_SSL"):
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.server_cert.configure_cert(ctx)
            if mtls:
                ctx.verify_mode = ssl.CERT_REQUIRED
                self.ca.configure_trust(ctx)
        self.proxy = KafkaSecurityProxy(security_protocol=security_protocol, ssl_context=ctx, users=users,
                                        **proxy_kw)
        self.tmpdir = tmpdir
        self.broker = None

    @property
    def bootstrap(self) -> str:
        return self.proxy.address

    def start(self) -> SecuredKafka:
        from journey.live.broker import EmbeddedBroker

        self.proxy.start()
        try:
            self.broker = EmbeddedBroker(advertised=self.proxy.address).start()
            self.proxy.upstream = ("127.0.0.1", self.broker.port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.proxy.stop()
        finally:
            if self.broker is not None:
                self.broker.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def client_ssl_context(self, *, trust: bool = True, client_cert: bool = False) -> ssl.SSLContext:
        """A client context: trusting the CA (or only the system's CAs), with the client certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if trust:
            self.ca.configure_trust(ctx)
        if client_cert:
            self.client_cert.configure_cert(ctx)
        return ctx

    def pem_files(self, directory) -> dict[str, str]:
        """The CA, the client certificate and its key as PEM files (for librdkafka)."""
        paths = {"ca": os.path.join(directory, "ca.pem"), "cert": os.path.join(directory, "client.pem"),
                 "key": os.path.join(directory, "client.key")}
        self.ca.cert_pem.write_to_path(paths["ca"])
        self.client_cert.cert_chain_pems[0].write_to_path(paths["cert"])
        self.client_cert.private_key_pem.write_to_path(paths["key"])
        return paths
