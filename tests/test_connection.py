"""The Kafka connection settings (journey.io.connection): one value from flags, the
environment and a client properties file in the Java or librdkafka style; refusals that say
what to set; no password in any repr or message."""

from __future__ import annotations

import ssl

import pytest
import trustme

from journey.io import connection
from journey.io.connection import KafkaSettingsError, load

SECRET = "pa55-Wörd;'\"=x"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client = ca.issue_cert("journey-client")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client-both.pem"))
    return d


def test_no_settings_is_plaintext():
    c = load(environ={})
    assert (c.protocol, c.client_options(), c.faust_credentials()) == ("PLAINTEXT", {"security_protocol": "PLAINTEXT"},
                                                                       None)


def test_a_confluent_cloud_java_snippet_works_unchanged(tmp_path):
    f = tmp_path / "client.properties"
    f.write_text("# Required connection configs for Kafka producer, consumer, and admin\n"
                 "bootstrap.servers=pkc-abc12.eu-west-1.aws.confluent.cloud:9092\n"
                 "security.protocol=SASL_SSL\n"
                 "sasl.mechanism=PLAIN\n"
                 "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
                 "username='ABCDEFG123' password='s3cr=t;x';\n"
                 "# Best practice for higher availability in Apache Kafka clients prior to 3.0\n"
                 "session.timeout.ms=45000\nclient.dns.lookup=use_all_dns_ips\nacks=all\n")
    c = load(str(f), environ={})
    assert (c.protocol, c.mechanism, c.username, c.password) == ("SASL_SSL", "PLAIN", "ABCDEFG123", "s3cr=t;x")
    assert c.bootstrap == "pkc-abc12.eu-west-1.aws.confluent.cloud:9092"
    opts = c.client_options()
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "PLAIN"
    assert isinstance(opts["ssl_context"], ssl.SSLContext) and opts["ssl_context"].check_hostname
    creds = c.faust_credentials()
    # Faust: TLS inside the SASL credentials, or it talks SASL_PLAINTEXT to the TLS port
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context is opts["ssl_context"]


def test_an_msk_scram_java_snippet_and_a_pem_truststore(tmp_path, pki):
    f = tmp_path / "msk.properties"
    f.write_text("security.protocol = SASL_SSL\nsasl.mechanism : SCRAM-SHA-512\n"
                 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n'
                 '    username="alice" password="a\\\\\\"b;=";\n'
                 f"ssl.truststore.location={pki / 'ca.pem'}\nssl.truststore.type=PEM\n")
    c = load(str(f), environ={})
    assert (c.mechanism, c.username, c.password, c.cafile) == ("SCRAM-SHA-512", "alice", 'a"b;=',
                                                                   str(pki / "ca.pem"))
    assert c.faust_credentials().mechanism.value == "SCRAM-SHA-512"


def test_a_librdkafka_aiven_snippet_with_client_certificates(tmp_path, pki):
    f = tmp_path / "aiven.conf"
    f.write_text("security.protocol=ssl\nssl.ca.location=ca.pem\nssl.certificate.location=client.pem\n"
                 "ssl.key.location=client.key\n")
    for name in ("ca.pem", "client.pem", "client.key"):  # paths relative to the file
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    c = load(str(f), environ={})
    assert (c.protocol, c.cafile, c.certfile, c.keyfile) == ("SSL", str(tmp_path / "ca.pem"),
                                                            str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    ctx = c.ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.verify_flags & getattr(ssl, "VERIFY_X509_STRICT", 0)
    assert c.faust_credentials().protocol.value == "SSL"


def test_librdkafka_style_sasl_and_the_environment_wins_over_the_file(tmp_path, pki):
    f = tmp_path / "rd.conf"
    f.write_text("security.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-256\nsasl.username=bob\nsasl.password=x\n")
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    c = load(environ={"JOURNEY_KAFKA_CONFIG": str(f), "JOURNEY_KAFKA_SASL_MECHANISM": "scram-sha-512",
                      "JOURNEY_KAFKA_SASL_PASSWORD_FILE": str(pw), "JOURNEY_KAFKA_SSL_CAFILE": str(pki / "ca.pem"),
                      "JOURNEY_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    assert (c.mechanism, c.username, c.password, c.check_hostname) == ("SCRAM-SHA-512", "bob", SECRET, False)
    assert not c.ssl_context().check_hostname
    # the flag's file wins over JOURNEY_KAFKA_CONFIG
    g = tmp_path / "other.conf"
    g.write_text("security.protocol=SSL\n")
    assert load(str(g), environ={"JOURNEY_KAFKA_CONFIG": str(f)}).protocol == "SSL"


def test_one_pem_file_with_the_key_and_its_certificate(pki):
    c = load(environ={"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SSL", "JOURNEY_KAFKA_SSL_CERTFILE":
                      str(pki / "client-both.pem")})
    assert c.keyfile == c.certfile and c.ssl_context() is c.ssl_context()   # built once


@pytest.mark.parametrize("env,needle", [
    ({"JOURNEY_KAFKA_SASL_USERNAME": "u", "JOURNEY_KAFKA_SASL_PASSWORD": SECRET}, "security protocol is PLAINTEXT"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "JOURNEY_KAFKA_SASL_USERNAME": "u",
      "JOURNEY_KAFKA_SASL_PASSWORD": SECRET}, "needs a SASL mechanism"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "JOURNEY_KAFKA_SASL_MECHANISM": "GSSAPI",
      "JOURNEY_KAFKA_SASL_USERNAME": "u", "JOURNEY_KAFKA_SASL_PASSWORD": SECRET}, "not supported"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "JOURNEY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
      "JOURNEY_KAFKA_SASL_USERNAME": "u"}, "needs a user name and a password"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL-SSL"}, "needs a SASL mechanism"),     # spelled loosely: accepted
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SSLL"}, "did you mean SSL"),
    ({"JOURNEY_KAFKA_SSL_CAFILE": "/etc/hosts"}, "security protocol is PLAINTEXT"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SSL", "JOURNEY_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "does not exist"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SSL", "JOURNEY_KAFKA_SSL_KEYFILE": "/etc/hosts"}, "without its certificate"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SSL", "JOURNEY_KAFKA_SSL_CERTFILE": "/etc/hosts"}, "without its private key"),
    ({"JOURNEY_KAFKA_SSL_CHECK_HOSTNAME": "maybe"}, "true or false"),
    ({"JOURNEY_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "cannot be read"),
])
def test_settings_that_conflict_or_are_incomplete_are_refused_without_the_secret(env, needle):
    with pytest.raises(KafkaSettingsError) as e:
        load(environ=env)
    assert needle in str(e.value) and SECRET not in str(e.value)


def test_java_stores_that_are_not_pem_are_refused_with_how_to_convert(tmp_path):
    f = tmp_path / "c.properties"
    f.write_text("security.protocol=SSL\nssl.truststore.location=/x/truststore.jks\nssl.truststore.password=changeit\n")
    with pytest.raises(KafkaSettingsError, match="JKS store; journey reads PEM"):
        load(str(f), environ={})
    f.write_text("security.protocol=SASL_SSL\nsasl.mechanism=OAUTHBEARER\nsasl.jaas.config=org.apache.kafka.common."
                 "security.oauthbearer.OAuthBearerLoginModule required;\n")
    with pytest.raises(KafkaSettingsError, match="PlainLoginModule and ScramLoginModule"):
        load(str(f), environ={})


def test_no_password_in_repr_or_description(tmp_path):
    c = load(environ={"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "JOURNEY_KAFKA_SASL_MECHANISM": "PLAIN",
                      "JOURNEY_KAFKA_SASL_USERNAME": "api-key-user", "JOURNEY_KAFKA_SASL_PASSWORD": SECRET})
    for text in (repr(c), str(c), c.describe(), repr(c.faust_credentials())):
        assert SECRET not in text
    assert "api-key-user" not in c.describe() and c.describe() == "SASL_PLAINTEXT, PLAIN"


@pytest.mark.parametrize("logged,needle", [
    (['Unable connect to "h:9096": [Error 58] SaslAuthenticationFailed: Authentication failed during '
      'authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512'], "refused the SASL user name"),
    (['Unable connect to "h:9094": [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get '
      'local issuer certificate (_ssl.c:1006)'], "not signed by a CA journey trusts"),
    (["[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid "
      "for '127.0.0.1'. (_ssl.c:1006)"], "does not name that host"),
    (['Unable connect to "h:9092": [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)'],
     "does not speak TLS"),
    (["[Error 33] UnsupportedSaslMechanismError"], "does not offer the SASL mechanism"),
    (["[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"], "client certificate"),
])
def test_connection_failures_are_explained(logged, needle):
    conn = load(environ={"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "JOURNEY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                         "JOURNEY_KAFKA_SASL_USERNAME": "u", "JOURNEY_KAFKA_SASL_PASSWORD": SECRET})
    why = connection.explain(Exception("Unable to bootstrap from [('h', 9092)]"), logged, conn, "kafka://h:9092")
    assert why is not None and needle in why and SECRET not in why
    assert connection.explain(Exception("Unable to bootstrap"), ["Connection refused"], conn, "h") is None
