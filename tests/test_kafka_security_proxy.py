"""The TLS- and SASL-terminating proxy (tests/kafka_security_proxy.py) in front of Tansu, driven by
clients we did not write: aiokafka (producer, consumer, admin client) and librdkafka
(confluent-kafka), over SSL, mTLS, SASL_SSL and SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512; and what a secured Kafka refuses: a wrong password (SASL_AUTHENTICATION_FAILED, then
the connection closed), an unknown mechanism, a client that does not trust the CA, a missing client
certificate, plaintext against the TLS port, any request before authentication (issue 26)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as Errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import ApiVersionResponse_v0, ApiVersionResponse_v1
from kafka_security_proxy import SecuredKafka, rewrite_api_versions

USERS = {"alice": "alice-secret", "bob": "bob=secret,with,commas"}
PRODUCE, FETCH, METADATA, OFFSET_COMMIT, FIND_COORDINATOR, JOIN_GROUP, CREATE_TOPICS = 0, 1, 3, 8, 10, 11, 19
TLS = ("SSL", "SASL_SSL")


@pytest.fixture
def secured():
    """secured(security_protocol, **kw): a started SecuredKafka, stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda protocol, **kw: stack.enter_context(SecuredKafka(protocol, users=USERS, **kw))


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def aiokafka_kw(k: SecuredKafka, mechanism=None, user="alice", password=None, *, trust=True,
                client_cert=False, protocol=None) -> dict:
    protocol = protocol or k.security_protocol
    kw = {"bootstrap_servers": k.bootstrap, "security_protocol": protocol, "request_timeout_ms": 10_000,
          "retry_backoff_ms": 50}
    if protocol in TLS:
        kw["ssl_context"] = k.client_ssl_context(trust=trust, client_cert=client_cert)
    if mechanism:
        kw.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                  sasl_plain_password=USERS[user] if password is None else password)
    return kw


async def roundtrip(kw: dict, topic: str, n: int = 3, group: str | None = None) -> list:
    """Create a topic with the admin client, produce n records, read them back (with a consumer
    group, committed, when ``group`` is given)."""
    admin = AIOKafkaAdminClient(**kw)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kw)
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    if group:
        consumer = AIOKafkaConsumer(topic, group_id=group, auto_offset_reset="earliest",
                                    enable_auto_commit=False, **kw)
    else:
        consumer = AIOKafkaConsumer(group_id=None, auto_offset_reset="earliest", **kw)
    await consumer.start()
    try:
        if not group:
            consumer.assign([TopicPartition(topic, 0)])
        got = []
        while len(got) < n:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                got += [(r.key, r.value) for r in recs]
        if group:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


EXPECTED = [(b"k", b"v0"), (b"k", b"v1"), (b"k", b"v2")]

CASES = [
    # (security protocol, mechanism, options)
    ("SSL", None, {}),
    ("SSL", None, {"mtls": True}),
    ("SASL_SSL", "PLAIN", {}),
    ("SASL_SSL", "SCRAM-SHA-256", {}),
    ("SASL_SSL", "SCRAM-SHA-512", {"mtls": True}),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256", {}),
    ("SASL_PLAINTEXT", "PLAIN", {}),
    ("PLAINTEXT", None, {}),
    # a broker that does not list SaslHandshake/SaslAuthenticate: the proxy's rewrite adds them
    ("SASL_SSL", "SCRAM-SHA-512", {"hide_broker_apis": (17, 36)}),
    # SaslHandshake v0 only: the SASL tokens go raw, without SaslAuthenticate (Kafka before 1.0)
    ("SASL_SSL", "SCRAM-SHA-256", {"handshake_max_version": 0}),
    ("SASL_PLAINTEXT", "PLAIN", {"handshake_max_version": 0}),
]


@pytest.mark.live
@pytest.mark.parametrize("protocol,mechanism,opts", CASES,
                         ids=[f"{p}-{m or 'none'}-{'-'.join(o) or 'plain'}" for p, m, o in CASES])
def test_aiokafka_produces_and_consumes_through_the_proxy(secured, protocol, mechanism, opts):
    k = secured(protocol, **opts)
    user = "bob" if mechanism and mechanism.startswith("SCRAM") else "alice"  # bob's name needs no escape;
    kw = aiokafka_kw(k, mechanism, user=user, client_cert=opts.get("mtls", False))  # his password has , and =
    assert run(roundtrip(kw, "secured")) == EXPECTED
    s = k.proxy.wait_idle()
    n = s.connections
    assert n >= 2  # the bootstrap connection and the node's (the broker advertised the proxy)
    # the records went through the proxy: the broker's Metadata sent the clients back to it
    assert s.relayed[PRODUCE] >= 1 and s.relayed[FETCH] >= 1 and s.relayed[CREATE_TOPICS] == 1
    assert s.tls_handshakes == (n if protocol in TLS else 0) and s.tls_failures == 0
    assert s.client_certificates == (["journey-test-client"] * n if opts.get("mtls") else [])
    if mechanism:
        assert (s.authentications, s.auth_failures, s.refused_before_auth) == (n, 0, 0)
        assert s.by_mechanism == {mechanism: n} and s.users == {user: n}
        legacy = opts.get("handshake_max_version") == 0
        assert s.handshake_versions == {0 if legacy else 1: n}
        assert (s.raw_sasl_tokens > 0) == legacy and (sum(s.authenticate_versions.values()) > 0) == (not legacy)
        assert s.api_versions_rewritten == (n if legacy or "hide_broker_apis" in opts else 0)
    else:
        assert s.authentications == 0 and s.api_versions_rewritten == 0


@pytest.mark.live
def test_aiokafka_consumer_group_commits_through_the_proxy(secured):
    """Group coordination (FindCoordinator, JoinGroup, OffsetCommit) over SASL_SSL; the committed
    offset is read back on a new connection."""
    k = secured("SASL_SSL")
    kw = aiokafka_kw(k, "SCRAM-SHA-512")
    assert run(roundtrip(kw, "grouped", group="g1")) == EXPECTED

    async def committed():
        c = AIOKafkaConsumer(group_id="g1", **kw)
        await c.start()
        try:
            return await c.committed(TopicPartition("grouped", 0))
        finally:
            await c.stop()

    assert run(committed()) == 3
    s = k.proxy.wait_idle()
    assert s.relayed[FIND_COORDINATOR] >= 1 and s.relayed[JOIN_GROUP] >= 1 and s.relayed[OFFSET_COMMIT] >= 1
    assert s.authentications == s.connections and s.auth_failures == 0


# --- librdkafka ---------------------------------------------------------------------------------------

def librdkafka_roundtrip(conf: dict, topic: str, n: int = 3, deadline_s: float = 20) -> list:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin import NewTopic as CKNewTopic

    admin = AdminClient(conf)
    admin.create_topics([CKNewTopic(topic, 1, 1)], operation_timeout=10)[topic].result(timeout=10)
    del admin
    producer = Producer(conf)
    for i in range(n):
        producer.produce(topic, f"v{i}".encode(), key=b"k")
    assert producer.flush(10) == 0, "records not delivered within 10 s"
    del producer
    consumer = Consumer({**conf, "group.id": "ck", "enable.auto.commit": False})
    from confluent_kafka import TopicPartition as CKTopicPartition

    consumer.assign([CKTopicPartition(topic, 0, 0)])
    got, deadline = [], time.monotonic() + deadline_s
    try:
        while len(got) < n:
            assert time.monotonic() < deadline, f"{len(got)} of {n} records read within {deadline_s:.0f} s"
            m = consumer.poll(0.5)
            if m is not None:
                assert m.error() is None, m.error()
                got.append((m.key(), m.value()))
    finally:
        consumer.close()
    return got


@pytest.mark.live
@pytest.mark.parametrize("protocol,mechanism,mtls", [("SASL_SSL", "SCRAM-SHA-512", False), ("SSL", None, True)])
def test_librdkafka_produces_and_consumes_through_the_proxy(secured, tmp_path, protocol, mechanism, mtls):
    # the broker's ApiVersions made to omit the SASL APIs: librdkafka (ApiVersions v3+, a flexible
    # version) authenticates only because the proxy's rewrite lists them
    k = secured(protocol, mtls=mtls, hide_broker_apis=(17, 36))
    pem = k.pem_files(tmp_path)
    conf = {"bootstrap.servers": k.bootstrap, "security.protocol": protocol, "ssl.ca.location": pem["ca"],
            "socket.timeout.ms": 10_000}
    if mechanism:
        conf.update({"sasl.mechanism": mechanism, "sasl.username": "bob", "sasl.password": USERS["bob"]})
    if mtls:
        conf.update({"ssl.certificate.location": pem["cert"], "ssl.key.location": pem["key"]})
    assert librdkafka_roundtrip(conf, "ck") == EXPECTED
    s = k.proxy.wait_idle()
    # librdkafka may drop a connection it no longer needs mid-handshake (a client destroyed while
    # it connects): such a connection is reset by the client, never refused by the proxy
    n = s.tls_handshakes
    assert n >= 2 and [e for e in s.tls_errors if not e.startswith("ConnectionResetError")] == []
    assert s.relayed[PRODUCE] >= 1 and s.relayed[FETCH] >= 1
    if mechanism:
        assert s.authentications >= 2 and (s.auth_failures, s.refused_before_auth) == (0, 0)
        assert s.by_mechanism == {mechanism: s.authentications} and s.users == {"bob": s.authentications}
        assert min(s.api_versions_versions) >= 3 and s.api_versions_rewritten == sum(s.api_versions_versions.values())
    else:
        assert s.client_certificates == ["journey-test-client"] * n


@pytest.mark.live
def test_librdkafka_reports_a_wrong_password(secured, tmp_path):
    from confluent_kafka import KafkaError, Producer

    k = secured("SASL_SSL")
    errors = []
    p = Producer({"bootstrap.servers": k.bootstrap, "security.protocol": "SASL_SSL",
                  "ssl.ca.location": k.pem_files(tmp_path)["ca"], "sasl.mechanism": "SCRAM-SHA-512",
                  "sasl.username": "alice", "sasl.password": "wrong", "error_cb": errors.append})
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        p.poll(0.2)
    del p
    assert errors, "no error reported within 10 s"
    assert errors[0].code() == KafkaError._AUTHENTICATION
    assert "Authentication failed" in errors[0].str() and "SCRAM-SHA-512" in errors[0].str()
    s = k.proxy.wait_idle()
    assert s.authentications == 0 and s.auth_failures >= 1 and not s.relayed


# --- what aiokafka is refused ---------------------------------------------------------------------------

@pytest.mark.live
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_a_wrong_password_is_sasl_authentication_failed(secured, mechanism):
    k = secured("SASL_SSL")
    kw = aiokafka_kw(k, mechanism, password="not-her-password")
    with pytest.raises(Errors.SaslAuthenticationFailed, match="Authentication failed"):
        run(create_conn("127.0.0.1", k.proxy.port, ssl_context=kw["ssl_context"], security_protocol="SASL_SSL",
                        sasl_mechanism=mechanism, sasl_plain_username="alice",
                        sasl_plain_password="not-her-password"))
    # an unknown user too
    with pytest.raises(Errors.SaslAuthenticationFailed):
        run(create_conn("127.0.0.1", k.proxy.port, ssl_context=kw["ssl_context"], security_protocol="SASL_SSL",
                        sasl_mechanism=mechanism, sasl_plain_username="mallory",
                        sasl_plain_password=USERS["alice"]))
    s = k.proxy.wait_idle()
    assert (s.authentications, s.auth_failures, s.failed_users) == (0, 2, [mechanism] * 2)
    assert not s.relayed


@pytest.mark.live
def test_a_producer_with_a_wrong_password_does_not_start(secured, caplog):
    """What an application sees: aiokafka's bootstrap turns the refusal into KafkaConnectionError and
    logs the broker's SASL_AUTHENTICATION_FAILED with its message."""
    k = secured("SASL_SSL")

    async def start():
        p = AIOKafkaProducer(**aiokafka_kw(k, "SCRAM-SHA-256", password="wrong"))
        try:
            await p.start()
        finally:
            await p.stop()

    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(Errors.KafkaConnectionError,
                                                                           match="Unable to bootstrap"):
        run(start())
    assert "[Error 58] SaslAuthenticationFailed: Authentication failed" in caplog.text
    assert k.proxy.wait_idle().authentications == 0


@pytest.mark.live
def test_a_wrong_password_over_the_raw_v0_exchange_closes_the_connection(secured):
    k = secured("SASL_PLAINTEXT", handshake_max_version=0)
    with pytest.raises(Errors.KafkaConnectionError):
        run(create_conn("127.0.0.1", k.proxy.port, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                        sasl_plain_username="alice", sasl_plain_password="wrong", request_timeout_ms=5000))
    s = k.proxy.wait_idle()
    assert (s.authentications, s.auth_failures, s.raw_sasl_tokens) == (0, 1, 1)


@pytest.mark.live
def test_an_unknown_mechanism_is_refused(secured):
    k = secured("SASL_PLAINTEXT", mechanisms=("SCRAM-SHA-512",))
    with pytest.raises(Errors.UnsupportedSaslMechanismError):
        run(create_conn("127.0.0.1", k.proxy.port, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                        sasl_plain_username="alice", sasl_plain_password=USERS["alice"]))
    s = k.proxy.wait_idle()
    assert (s.unsupported_mechanisms, s.authentications) == (1, 0)


def _refused_at_tls(k: SecuredKafka, **kw):
    async def start():
        p = AIOKafkaProducer(**aiokafka_kw(k, **kw))
        try:
            await p.start()
        finally:
            await p.stop()

    with pytest.raises(Errors.KafkaConnectionError, match="Unable to bootstrap"):
        run(start())
    s = k.proxy.wait_idle()
    assert s.connections >= 1 and s.tls_failures == s.connections and s.tls_handshakes == 0
    assert not s.relayed and s.authentications == 0


@pytest.mark.live
def test_a_client_that_does_not_trust_the_ca_fails_the_tls_handshake(secured):
    k = secured("SASL_SSL")
    with pytest.raises(ssl.SSLCertVerificationError):
        run(create_conn("127.0.0.1", k.proxy.port, ssl_context=k.client_ssl_context(trust=False),
                        security_protocol="SSL"))
    _refused_at_tls(k, mechanism="PLAIN", trust=False)


@pytest.mark.live
def test_mtls_refuses_a_client_without_a_certificate(secured):
    k = secured("SSL", mtls=True)
    _refused_at_tls(k, client_cert=False)


@pytest.mark.live
def test_plaintext_against_the_tls_port_fails(secured):
    k = secured("SSL")
    _refused_at_tls(k, protocol="PLAINTEXT")


# --- the wire, byte by byte -------------------------------------------------------------------------------

def request(api_key: int, version: int, correlation_id: int, body: bytes = b"", flexible: bool = False) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"
    payload = header + (b"\x00" if flexible else b"") + body
    return struct.pack(">i", len(payload)) + payload


def recv_frame(sock: socket.socket) -> bytes | None:
    """One response frame, or None when the proxy closed the connection."""
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf
    size = exactly(4)
    return None if size is None else exactly(struct.unpack(">i", size)[0])


def handshake(sock, mechanism: str, correlation_id: int = 2):
    name = mechanism.encode()
    sock.sendall(request(17, 1, correlation_id, struct.pack(">h", len(name)) + name))
    r = recv_frame(sock)
    corr, error, count = struct.unpack(">ihi", r[:10])
    mechs, pos = [], 10
    for _ in range(count):
        n = struct.unpack(">h", r[pos:pos + 2])[0]
        mechs.append(r[pos + 2:pos + 2 + n].decode())
        pos += 2 + n
    return corr, error, mechs


def authenticate(sock, token: bytes, version: int, correlation_id: int = 3):
    """SaslAuthenticate at ``version``: (correlation id, error code, error message, auth bytes)."""
    if version >= 2:
        sock.sendall(request(36, version, correlation_id, bytes([len(token) + 1]) + token + b"\x00", flexible=True))
        r = recv_frame(sock)
        corr, tags, error = struct.unpack(">ibh", r[:7])
        assert tags == 0
        n = r[7] - 1
        message = None if n < 0 else r[8:8 + n].decode()
        pos = 8 + max(n, 0)
        m = r[pos] - 1
        return corr, error, message, r[pos + 1:pos + 1 + m]
    sock.sendall(request(36, version, correlation_id, struct.pack(">i", len(token)) + token))
    r = recv_frame(sock)
    corr, error, n = struct.unpack(">ihh", r[:8])
    message = None if n < 0 else r[8:8 + n].decode()
    pos = 8 + max(n, 0)
    m = struct.unpack(">i", r[pos:pos + 4])[0]
    return corr, error, message, r[pos + 4:pos + 4 + m]


def closed(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def wire(secured):
    """A SASL_PLAINTEXT proxy and a raw socket to it (5 s on every read)."""
    k = secured("SASL_PLAINTEXT")
    with socket.create_connection(("127.0.0.1", k.proxy.port), timeout=5) as sock:
        yield k, sock


@pytest.mark.live
@pytest.mark.parametrize("version", [0, 1, 2])
def test_wire_a_wrong_password_gets_error_58_and_a_message_then_the_connection_closes(wire, version):
    k, sock = wire
    assert handshake(sock, "PLAIN") == (2, 0, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    corr, error, message, auth = authenticate(sock, b"\0alice\0wrong", version)
    assert (corr, error, auth) == (3, 58, b"")
    assert message == "Authentication failed: Invalid username or password"
    assert closed(sock)
    assert k.proxy.wait_idle().authenticate_versions == {version: 1}


@pytest.mark.live
@pytest.mark.parametrize("version", [0, 1, 2])
def test_wire_authenticated_then_metadata_advertises_the_proxy(wire, version):
    k, sock = wire
    sock.sendall(request(18, 0, 1))
    listed = ApiVersionResponse_v0.decode(recv_frame(sock)[4:]).api_versions
    assert (17, 0, 1) in listed and (36, 0, 2) in listed
    handshake(sock, "PLAIN")
    assert authenticate(sock, b"\0alice\0" + USERS["alice"].encode(), version) == (3, 0, None, b"")
    sock.sendall(request(METADATA, 0, 4, struct.pack(">i", 0)))
    r = recv_frame(sock)
    corr, brokers, node, n = struct.unpack(">iiih", r[:14])
    host = r[14:14 + n].decode()
    port = struct.unpack(">i", r[14 + n:18 + n])[0]
    assert (corr, brokers, f"{host}:{port}") == (4, 1, k.bootstrap)
    assert k.proxy.stats().relayed == {METADATA: 1}  # stats(): this socket is still open


@pytest.mark.live
@pytest.mark.parametrize("first", ["metadata", "authenticate-before-handshake", "second-handshake"])
def test_wire_nothing_but_api_versions_and_sasl_before_authentication(wire, first):
    k, sock = wire
    if first == "metadata":
        sock.sendall(request(METADATA, 0, 1, struct.pack(">i", 0)))
    elif first == "authenticate-before-handshake":
        sock.sendall(request(36, 1, 1, struct.pack(">i", 3) + b"abc"))
    else:
        handshake(sock, "PLAIN")
        sock.sendall(request(17, 1, 3, struct.pack(">h", 5) + b"PLAIN"))
    assert closed(sock)
    s = k.proxy.wait_idle()
    assert (s.refused_before_auth, s.authentications, s.relayed) == (1, 0, {})


@pytest.mark.live
def test_wire_an_unknown_mechanism_gets_error_33_and_the_enabled_ones(wire):
    k, sock = wire
    assert handshake(sock, "GSSAPI") == (2, 33, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    assert closed(sock)


# --- the ApiVersions rewrite, byte by byte --------------------------------------------------------------

def test_rewrite_api_versions_v0_and_v1_adds_the_sasl_apis():
    """Decoded with aiokafka's own structs; a broker's own SaslAuthenticate range (0-5 here) is
    replaced by what the proxy serves."""
    ensure = {17: (0, 1), 36: (0, 2)}
    entries = struct.pack(">hhh", 0, 0, 9) + struct.pack(">hhh", 18, 0, 3) + struct.pack(">hhh", 36, 0, 5)
    v0 = struct.pack(">ihi", 7, 0, 3) + entries
    out = rewrite_api_versions(v0, 0, ensure)
    assert struct.unpack(">i", out[:4])[0] == 7
    assert ApiVersionResponse_v0.decode(out[4:]).api_versions == [(0, 0, 9), (17, 0, 1), (18, 0, 3), (36, 0, 2)]
    v1 = v0 + struct.pack(">i", 250)  # throttle_time_ms
    decoded = ApiVersionResponse_v1.decode(rewrite_api_versions(v1, 1, ensure)[4:])
    assert decoded.api_versions == [(0, 0, 9), (17, 0, 1), (18, 0, 3), (36, 0, 2)]
    assert decoded.throttle_time_ms == 250
    # an error answer is left as it is
    err = struct.pack(">ihi", 7, 35, 0)
    assert rewrite_api_versions(err, 3, ensure) == err


def test_rewrite_api_versions_v3_keeps_the_tagged_fields():
    # v3: compact array (count + 1), a tagged-field section per entry (18's has one field: tag 5,
    # 1 byte), throttle_time_ms, top-level tags
    top_tags = b"\x01" + b"\x00" + b"\x03" + b"abc"  # one tagged field: tag 0, 3 bytes
    v3 = (struct.pack(">ih", 9, 0) + b"\x03" + struct.pack(">hhh", 3, 0, 12) + b"\x00"
          + struct.pack(">hhh", 18, 0, 4) + b"\x01\x05\x01z" + struct.pack(">i", 0) + top_tags)
    out = rewrite_api_versions(v3, 3, {17: (0, 1), 36: (0, 2)}, drop=(3,))
    assert out == (struct.pack(">ih", 9, 0) + b"\x04" + struct.pack(">hhh", 17, 0, 1) + b"\x00"
                   + struct.pack(">hhh", 18, 0, 4) + b"\x01\x05\x01z" + struct.pack(">hhh", 36, 0, 2) + b"\x00"
                   + struct.pack(">i", 0) + top_tags)
