"""journey's own commands against a secured Kafka (domain.md section 10, issue 26): the
TLS- and SASL-terminating proxy of tests/kafka_security_proxy.py in front of the embedded
broker (Tansu cannot serve TLS or SASL itself: see that file). Real TLS with trustme
certificates, real SCRAM verified by scramp, PLAIN, client certificates.

Covered: the worker end to end against replay (SASL_SSL SCRAM-SHA-512 from a Java-style
properties file with a topic prefix; SSL with a client certificate from a librdkafka-style
file), produce, topics create, erase, dispatch and experiments report --broker; PLAIN and
SCRAM-SHA-256 from the environment; and every failure a person must be able to act on, each
ending within the broker wait with one message, exit 1, no traceback, no secret."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest
from dispatch_support import Receiver
from intake_support import Intake
from kafka_security_proxy import SecuredKafka
from live_support import multiset, read_topic, ready, stop_process, wait_for

from journey.dispatch.signing import new_secret
from journey.io import topics
from journey.live.broker import free_port

pytestmark = pytest.mark.live

PASSWORD = "S3cret-pa55;with=odd'chars"
USERS = {"journey-svc": PASSWORD}
UNTIL = "2026-08-01T00:00:00Z"


def journey(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "journey", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _clean_env(**extra) -> dict:
    """The test's environment without any JOURNEY_KAFKA_* of the machine, plus ``extra``."""
    env = {k: "" for k in os.environ if k.startswith("JOURNEY_KAFKA_") or k == "JOURNEY_TOPIC_PREFIX"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def log_and_replay(tmp_path_factory):
    d = tmp_path_factory.mktemp("secured")
    log = d / "log.jsonl"
    r = journey("generate", "--customers", "200", "--events", "4000", "--out", str(log))
    assert r.returncode == 0, r.stderr
    r = journey("replay", str(log), "--out", str(d / "t.jsonl"), "--until", UNTIL, "-q")
    assert r.returncode == 0, r.stderr
    return log, [orjson.loads(x) for x in (d / "t.jsonl").read_bytes().splitlines()]


def _security(sk: SecuredKafka, mechanism: str | None = None, client_cert: bool = False) -> dict:
    """aiokafka options for the test's own reads of the secured broker."""
    opts = {"security_protocol": sk.security_protocol}
    if sk.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = sk.client_ssl_context(client_cert=client_cert)
    if mechanism:
        opts.update(sasl_mechanism=mechanism, sasl_plain_username="journey-svc", sasl_plain_password=PASSWORD)
    return opts


def _worker_gives_replays_triggers(sk, tmp_path, env, args, want, prefix="", security=None):
    """topics create, a worker, produce --until: the trigger records on the (prefixed) topic are replay's."""
    r = journey("topics", "create", *args, env=env)
    assert r.returncode == 0, r.stderr
    port = free_port()
    wlog = tmp_path / "worker.log"
    cmd_args = ["--store", "memory://", "--web-port", str(port), "--loglevel", "info", *args]
    w = subprocess.Popen([sys.executable, "-m", "journey", "worker", *cmd_args], stdout=open(wlog, "wb"),
                         stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        wait_for(lambda: (r := ready(port)) and r["ready"], 90, "the worker to be ready", every=0.3)
        r = journey("produce", str(want[0]), *args, "--until", UNTIL, "-q", env=env)
        assert r.returncode == 0, r.stderr
        triggers = prefix + topics.TRIGGERS
        got = wait_for(lambda: (g := read_topic(sk.bootstrap, triggers, idle_ms=300, **security))
                       and len(g) >= len(want[1]) and g, 120, "the triggers", every=2)
        time.sleep(1.5)
        got = read_topic(sk.bootstrap, triggers, **security)
        assert multiset(orjson.loads(v) for _k, v, *_ in got) == multiset(want[1])
        return w, wlog, port
    except BaseException:
        stop_process(w)
        raise


def test_sasl_ssl_scram_sha_512_from_a_java_properties_file_with_a_prefix(tmp_path, log_and_replay):
    """The worker, produce, topics, erase, experiments report and dispatch, all from one pasted
    Java-style snippet (bootstrap.servers in it: no --broker anywhere), on prefixed topics."""
    with SecuredKafka("SASL_SSL", users=USERS) as sk:
        ca = tmp_path / "ca.pem"
        sk.ca.cert_pem.write_to_path(str(ca))
        props = tmp_path / "client.properties"
        props.write_text(f"bootstrap.servers={sk.bootstrap}\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
                         "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                         f"username=\"journey-svc\" password=\"{PASSWORD}\";\n"
                         f"ssl.truststore.location={ca}\nssl.truststore.type=PEM\nacks=all\n")
        env = _clean_env(JOURNEY_TOPIC_PREFIX="acme.", JOURNEY_BROKER="")
        security = _security(sk, "SCRAM-SHA-512")
        w, wlog, port = _worker_gives_replays_triggers(sk, tmp_path, env, ("--kafka-config", str(props)),
                                                       log_and_replay, prefix="acme.", security=security)
        outputs = []
        try:
            # erase: the privacy record comes out on the prefixed triggers topic
            victim = log_and_replay[1][0]["subject"]
            r = subprocess.run([sys.executable, "-m", "journey", "erase", "--kafka-config", str(props), "--file", "-"],
                               input=victim + "\n", capture_output=True, text=True, timeout=120,
                               env={**os.environ, **env})
            assert r.returncode == 0, r.stderr
            outputs.append(r.stdout + r.stderr)
            wait_for(lambda: any(orjson.loads(v)["type"] == "journey.privacy.erased"
                                 for _k, v, *_ in read_topic(sk.bootstrap, "acme." + topics.TRIGGERS, idle_ms=300,
                                                             **security)), 60, "the erasure record")
            # experiments report --broker reads the prefixed outcomes topic
            r = journey("experiments", "report", "--kafka-config", str(props), "--broker", sk.bootstrap,
                        "--timeout", "30", env=env)
            assert r.returncode == 0, r.stderr
            outputs.append(r.stdout + r.stderr)
            # tail shows the prefixed triggers topic by its short name, through TLS and SASL
            r = journey("tail", "triggers", "--from-beginning", "--kafka-config", str(props), "--broker",
                        sk.bootstrap, env=env)
            assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
            assert any(" trigger erased (erasure) " in x for x in r.stdout.splitlines()), r.stdout[-2000:]
            outputs.append(r.stderr)
            # the dispatcher delivers the live triggers to a real receiver
            rx = Receiver()
            try:
                cfg = tmp_path / "dispatch.toml"
                cfg.write_text(f'[endpoints.hooks]\nurl = "{rx.url("hooks")}"\nsecrets = ["{new_secret()}"]\n'
                               '[[routes]]\nendpoints = ["hooks"]\n')
                dlog = tmp_path / "dispatch.log"
                # --allow-replayed: the generated log's triggers are months older than max_age by the clock
                d = subprocess.Popen([sys.executable, "-m", "journey", "dispatch", "--config", str(cfg),
                                      "--kafka-config", str(props), "--web-port", str(free_port()),
                                      "--allow-replayed"],
                                     stdout=open(dlog, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **env})
                try:
                    want = {t["id"] for t in log_and_replay[1]}
                    wait_for(lambda: set(rx.ids()) >= want, 120, "every trigger delivered", every=1)
                finally:
                    assert stop_process(d) == 0, dlog.read_text()[-3000:]
                outputs.append(dlog.read_text())
            finally:
                rx.stop()
        finally:
            assert stop_process(w) == 0, wlog.read_text()[-3000:]
        outputs.append(wlog.read_text())
        for text in outputs:
            assert PASSWORD not in text
        stats = sk.proxy.stats()
        assert stats.by_mechanism["SCRAM-SHA-512"] > 0 and stats.auth_failures == 0


def test_ssl_with_a_client_certificate_from_a_librdkafka_file(tmp_path, log_and_replay):
    with SecuredKafka("SSL", mtls=True) as sk:
        pem = sk.pem_files(str(tmp_path))
        conf = tmp_path / "rdkafka.conf"
        conf.write_text(f"bootstrap.servers={sk.bootstrap}\nsecurity.protocol=ssl\nssl.ca.location={pem['ca']}\n"
                        f"ssl.certificate.location={pem['cert']}\nssl.key.location={pem['key']}\n")
        env = _clean_env(JOURNEY_KAFKA_CONFIG=str(conf), JOURNEY_BROKER="")
        w, wlog, _port = _worker_gives_replays_triggers(sk, tmp_path, env, (), log_and_replay,
                                                        security=_security(sk, client_cert=True))
        assert stop_process(w) == 0, wlog.read_text()[-3000:]
        assert "journey-test-client" in sk.proxy.stats().client_certificates


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_ssl_from_the_environment_with_each_mechanism(tmp_path, log_and_replay, mechanism):
    with SecuredKafka("SASL_SSL", users=USERS) as sk:
        ca = tmp_path / "ca.pem"
        sk.ca.cert_pem.write_to_path(str(ca))
        pw = tmp_path / "password"
        pw.write_text(PASSWORD + "\n")
        env = _clean_env(JOURNEY_KAFKA_SECURITY_PROTOCOL="SASL_SSL", JOURNEY_KAFKA_SASL_MECHANISM=mechanism,
                         JOURNEY_KAFKA_SASL_USERNAME="journey-svc", JOURNEY_KAFKA_SASL_PASSWORD_FILE=str(pw),
                         JOURNEY_KAFKA_SSL_CAFILE=str(ca))
        for cmd in (("topics", "create", "--broker", sk.bootstrap),
                    ("produce", str(log_and_replay[0]), "--broker", sk.bootstrap, "-q")):
            r = journey(*cmd, env=env)
            assert r.returncode == 0, r.stderr
            assert PASSWORD not in r.stdout + r.stderr
        got = read_topic(sk.bootstrap, topics.PURCHASES, **_security(sk, mechanism))
        assert len(got) > 100
        # the HTTP intake with the same settings: a batch answered 200 is on the secured topic
        it = Intake(sk.bootstrap, tmp_path, keys="wk", extra_env={**env, "JOURNEY_BROKER": ""})
        try:
            it.wait_ready()
            batch = [{"type": "track", "userId": f"sec-{i}", "event": "Order Completed", "messageId": f"sec-{i}",
                      "properties": {"order_id": f"o-{i}", "revenue": 5}} for i in range(20)]
            assert it.post("/v1/batch", {"batch": batch}, key="wk")[:2] == \
                (200, {"success": True, "accepted": 20, "rejected": 0})
            ids = {orjson.loads(v).get("messageId") for _k, v, *_ in
                   read_topic(sk.bootstrap, topics.PURCHASES, **_security(sk, mechanism))}
            assert {m["messageId"] for m in batch} <= ids
        finally:
            assert it.stop() == 0, it.log.read_text()[-3000:]
        assert PASSWORD not in it.log.read_text()


def _fails_fast(args, env, needle, wait=20):
    """The command ends within the broker wait with one message naming the cause, exit 1."""
    t0 = time.monotonic()
    r = journey(*args, env={**env, "JOURNEY_BROKER_WAIT": str(wait)}, timeout=wait + 60)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert needle in out, out
    assert "Traceback" not in out and PASSWORD not in out and "wrong-password" not in out, out
    assert took < wait + 15, took
    return out


def test_failures_a_person_can_act_on(tmp_path):
    # SCRAM-SHA-512 only, as MSK's SASL/SCRAM listener
    with SecuredKafka("SASL_SSL", users=USERS, mechanisms=("SCRAM-SHA-512",)) as sk, SecuredKafka("SSL") as plain_tls:
        ca = tmp_path / "ca.pem"
        sk.ca.cert_pem.write_to_path(str(ca))
        sasl = _clean_env(JOURNEY_KAFKA_SECURITY_PROTOCOL="SASL_SSL", JOURNEY_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                          JOURNEY_KAFKA_SASL_USERNAME="journey-svc", JOURNEY_KAFKA_SASL_PASSWORD="wrong-password",
                          JOURNEY_KAFKA_SSL_CAFILE=str(ca))
        # a wrong password: refused at once (no 20 s of retries)
        for cmd in (("topics", "create"), ("worker", "--web-port", str(free_port())),
                    ("produce", os.devnull), ("intake", "--port", str(free_port()))):
            _fails_fast((*cmd, "--broker", sk.bootstrap), {**sasl, "JOURNEY_WRITE_KEYS": "k"},
                        "refused the SASL user name or password")
        # a CA that did not sign the broker's certificate
        other = tmp_path / "other-ca.pem"
        plain_tls.ca.cert_pem.write_to_path(str(other))
        _fails_fast(("topics", "create", "--broker", sk.bootstrap),
                    {**sasl, "JOURNEY_KAFKA_SASL_PASSWORD": PASSWORD, "JOURNEY_KAFKA_SSL_CAFILE": str(other)},
                    "not signed by a CA journey trusts")
        # TLS against a plaintext listener (the broker's own port)
        _fails_fast(("topics", "create", "--broker", f"127.0.0.1:{sk.broker.port}"),
                    _clean_env(JOURNEY_KAFKA_SECURITY_PROTOCOL="SSL"), "does not speak TLS")
        # plaintext against the TLS listener
        _fails_fast(("topics", "create", "--broker", sk.bootstrap), _clean_env(), "speaks TLS but the connection was plaintext")
        # a mechanism the cluster was not set up for
        _fails_fast(("topics", "create", "--broker", sk.bootstrap),
                    {**sasl, "JOURNEY_KAFKA_SASL_PASSWORD": PASSWORD, "JOURNEY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
                    "does not offer the SASL mechanism SCRAM-SHA-256")
    # incomplete settings: refused before any connection (exit 2), no secret echoed
    r = journey("topics", "create", env=_clean_env(JOURNEY_KAFKA_SASL_PASSWORD=PASSWORD))
    assert r.returncode == 2 and "SASL settings" in r.stderr and PASSWORD not in r.stderr, r.stderr
