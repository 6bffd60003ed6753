"""How journey connects to Kafka: one value, built once per command from flags, the
environment and an optional client properties file (domain.md section 10), and handed
to every Kafka client the command opens (the Faust app, aiokafka producers, consumers
and admin clients), so no path connects in plaintext by mistake.

Sources, the first that sets a value wins:

1. flags (``--kafka-config FILE`` names the file);
2. the environment: ``JOURNEY_KAFKA_SECURITY_PROTOCOL``, ``JOURNEY_KAFKA_SASL_MECHANISM``,
   ``JOURNEY_KAFKA_SASL_USERNAME``, ``JOURNEY_KAFKA_SASL_PASSWORD`` (or
   ``JOURNEY_KAFKA_SASL_PASSWORD_FILE``), ``JOURNEY_KAFKA_SSL_CAFILE``,
   ``JOURNEY_KAFKA_SSL_CERTFILE``, ``JOURNEY_KAFKA_SSL_KEYFILE``,
   ``JOURNEY_KAFKA_SSL_CHECK_HOSTNAME``; ``JOURNEY_KAFKA_CONFIG`` names the file;
3. the properties file, in the Java client's style (``security.protocol``,
   ``sasl.mechanism``, ``sasl.jaas.config`` with ``PlainLoginModule`` or
   ``ScramLoginModule``, ``ssl.truststore.location`` with ``ssl.truststore.type=PEM``,
   ``ssl.keystore.location`` with ``ssl.keystore.type=PEM``) or librdkafka's
   (``sasl.mechanisms``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``,
   ``ssl.certificate.location``, ``ssl.key.location``), so a provider's snippet is
   pasted unchanged. Its ``bootstrap.servers`` is the broker when no ``--broker`` or
   ``JOURNEY_BROKER`` is given.

Settings that conflict or are incomplete are refused with a message saying what to set.
No password or key is ever part of a message, a ``repr`` or a log line.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import ssl
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV = "JOURNEY_KAFKA_"


class KafkaSettingsError(ValueError):
    """The connection settings cannot be used as given (the message says what to change)."""


@dataclass(frozen=True, repr=False)
class KafkaConnection:
    """The security settings of every Kafka client a command opens."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, compare=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = field(default=None, compare=False)
    check_hostname: bool = True
    bootstrap: str | None = None          # bootstrap.servers of a properties file
    source: str = "defaults"              # where the settings came from, for messages
    _ctx: list = field(default_factory=list, compare=False)  # the SSL context, built once

    def __repr__(self) -> str:
        return f"KafkaConnection({self.describe()})"

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """What a person may see: the protocol, the mechanism and whether TLS checks the
        server's name; never a user name, password or key."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(self.mechanism or "?")
        if self.tls:
            parts.append("CA " + (os.path.basename(self.cafile) if self.cafile else "of the system"))
            if self.certfile:
                parts.append("client certificate")
            if not self.check_hostname:
                parts.append("host name not checked")
        return ", ".join(parts)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every connection (None without TLS), built once."""
        if not self.tls:
            return None
        if not self._ctx:
            try:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
            except (OSError, ssl.SSLError) as e:
                raise KafkaSettingsError(f"the CA file {self.cafile} cannot be used ({_ssl_why(e)}): give a PEM file "
                                         "of the CA certificates that signed the broker's certificate") from None
            # Python 3.13 turns on strict X.509 checks that many self-made CAs fail (a missing
            # key usage extension); Kafka's Java client does not check that strictly either
            ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
            ctx.check_hostname = self.check_hostname
            if self.certfile:
                try:
                    ctx.load_cert_chain(self.certfile, self.keyfile, password=self.key_password)
                except (OSError, ssl.SSLError) as e:
                    raise KafkaSettingsError(
                        f"the client certificate {self.certfile} and its key {self.keyfile or '(same file)'} cannot be "
                        f"used together ({_ssl_why(e)}): give the PEM certificate and the private key it belongs "
                        "to (and the key's password, if it has one)") from None
            self._ctx.append(ctx)
        return self._ctx[0]

    def client_options(self) -> dict:
        """Keyword arguments for aiokafka's producers, consumers and admin clients."""
        opts: dict = {"security_protocol": self.protocol}
        if self.tls:
            opts["ssl_context"] = self.ssl_context()
        if self.sasl:
            opts.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                        sasl_plain_password=self.password)
        return opts

    def faust_credentials(self):
        """The Faust app's ``broker_credentials`` (None for plaintext). With SASL, TLS goes
        inside the SASL credentials: Faust uses the app's own ``ssl_context`` only when no
        credentials are set, and would otherwise speak SASL_PLAINTEXT to a TLS port."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password, mechanism=self.mechanism,
                                         ssl_context=self.ssl_context())
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


PLAINTEXT = KafkaConnection()


def bootstrap(url: str) -> str:
    """``kafka://host:port[,kafka://host:port]`` or ``host:port`` -> ``host:port,host:port``."""
    parts = []
    for p in url.replace(";", ",").split(","):
        p = p.strip()
        if "://" in p:
            p = p.split("://", 1)[1]
        if p:
            parts.append(p.rstrip("/"))
    if not parts:
        raise ValueError(f"no broker address in {url!r}: give host:port, e.g. kafka://127.0.0.1:9092")
    return ",".join(parts)


# -- reading the settings ------------------------------------------------------------------------

_ENV_FIELDS = {
    "SECURITY_PROTOCOL": "protocol", "SASL_MECHANISM": "mechanism", "SASL_USERNAME": "username",
    "SASL_PASSWORD": "password", "SSL_CAFILE": "cafile", "SSL_CERTFILE": "certfile", "SSL_KEYFILE": "keyfile",
    "SSL_KEY_PASSWORD": "key_password", "SSL_CHECK_HOSTNAME": "check_hostname",
}


def load(config_file: str | None = None, environ=None) -> KafkaConnection:
    """The connection settings of a command: ``config_file`` (the ``--kafka-config`` flag)
    else ``JOURNEY_KAFKA_CONFIG``, overridden by the ``JOURNEY_KAFKA_*`` environment."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get(ENV + "CONFIG") or None
    values: dict = {}
    source = "defaults"
    if path:
        values = from_properties(read_properties(path), path)
        source = path
    given_env = []
    for suffix, name in _ENV_FIELDS.items():
        raw = environ.get(ENV + suffix)
        if raw is None or raw == "":
            continue
        given_env.append(ENV + suffix)
        values[name] = _bool(raw, ENV + suffix) if name == "check_hostname" else raw
    pw_file = environ.get(ENV + "SASL_PASSWORD_FILE")
    if pw_file and not environ.get(ENV + "SASL_PASSWORD"):
        given_env.append(ENV + "SASL_PASSWORD_FILE")
        try:
            with open(pw_file, encoding="utf-8") as f:
                values["password"] = f.read().strip()
        except OSError as e:
            raise KafkaSettingsError(f"{ENV}SASL_PASSWORD_FILE names {pw_file}, which cannot be read "
                                     f"({e.strerror or type(e).__name__})") from None
    if given_env:
        source = (f"{source} and " if path else "") + "the environment"
    return check(KafkaConnection(source=source, **values))


def check(c: KafkaConnection) -> KafkaConnection:
    """Refuse settings that conflict or are incomplete; normalize the rest."""
    where = f" (settings from {c.source})" if c.source != "defaults" else ""
    protocol = (c.protocol or "PLAINTEXT").strip().upper().replace("-", "_")
    if protocol not in PROTOCOLS:
        raise KafkaSettingsError(f"unknown security protocol {c.protocol!r}{where}: use one of "
                                 f"{', '.join(PROTOCOLS)}{_suggest(protocol, PROTOCOLS)}")
    mechanism = c.mechanism.strip().upper().replace("_", "-") if c.mechanism else None
    sasl = protocol.startswith("SASL_")
    tls = protocol in ("SSL", "SASL_SSL")
    if not sasl and (mechanism or c.username or c.password):
        raise KafkaSettingsError(
            f"SASL settings (mechanism, user name or password) are given but the security protocol is "
            f"{protocol}{where}: set {ENV}SECURITY_PROTOCOL (security.protocol) to SASL_SSL, or SASL_PLAINTEXT "
            "without TLS; clients ignore SASL settings otherwise")
    if sasl:
        if not mechanism:
            raise KafkaSettingsError(f"{protocol} needs a SASL mechanism{where}: set {ENV}SASL_MECHANISM "
                                     f"(sasl.mechanism) to one of {', '.join(MECHANISMS)}")
        if mechanism not in MECHANISMS:
            raise KafkaSettingsError(f"SASL mechanism {c.mechanism!r} is not supported{where}: use one of "
                                     f"{', '.join(MECHANISMS)}{_suggest(mechanism, MECHANISMS)}")
        if not c.username or c.password is None or c.password == "":
            raise KafkaSettingsError(f"{protocol} with {mechanism} needs a user name and a password{where}: set "
                                     f"{ENV}SASL_USERNAME and {ENV}SASL_PASSWORD (or {ENV}SASL_PASSWORD_FILE), or "
                                     "sasl.jaas.config / sasl.username and sasl.password in the properties file")
    if not tls and (c.cafile or c.certfile or c.keyfile):
        raise KafkaSettingsError(f"TLS files (CA, certificate or key) are given but the security protocol is "
                                 f"{protocol}{where}: set {ENV}SECURITY_PROTOCOL to SSL or SASL_SSL")
    certfile, keyfile = c.certfile, c.keyfile
    for label, path in (("CA file", c.cafile), ("client certificate", certfile), ("client key", keyfile)):
        if path and not os.path.isfile(path):
            raise KafkaSettingsError(f"the {label} {path} does not exist{where}")
    if keyfile and not certfile:
        raise KafkaSettingsError(f"a client key is given without its certificate{where}: set {ENV}SSL_CERTFILE "
                                 "(ssl.certificate.location) too")
    if certfile and not keyfile:
        if not _has_private_key(certfile):
            raise KafkaSettingsError(f"the client certificate {certfile} comes without its private key{where}: set "
                                     f"{ENV}SSL_KEYFILE (ssl.key.location), or give one PEM file holding both")
        keyfile = certfile
    return replace(c, protocol=protocol, mechanism=mechanism if sasl else None, certfile=certfile, keyfile=keyfile,
                   _ctx=[])


# -- properties files ------------------------------------------------------------------------------

def read_properties(path: str) -> dict[str, str]:
    """A Java-style ``.properties`` file (also librdkafka's ``key=value`` files): ``#`` and ``!``
    comments, ``=``, ``:`` or white space between key and value, ``\\`` continuing a line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise KafkaSettingsError(f"the Kafka client properties file {path} cannot be read "
                                 f"({e.strerror or type(e).__name__})") from None
    out: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if _continues(line):
            logical += line[:-1]
            continue
        logical += line
        m = re.match(r"((?:\\.|[^=:\s\\])+)\s*[=:\s]\s*(.*)$", logical)
        if m:
            key, value = _unescape(m.group(1)), _unescape(m.group(2).rstrip())
            out[key] = value
        elif logical.strip():
            out[_unescape(logical.strip())] = ""
        logical = ""
    return out


def _continues(line: str) -> bool:
    n = len(line) - len(line.rstrip("\\"))
    return n % 2 == 1


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(m.group(1), m.group(1)), s)


_JAAS = re.compile(r"""(\w+)\s*=\s*(?:"((?:\\.|[^"\\])*)"|'((?:\\.|[^'\\])*)'|([^\s;]+))""")


def from_properties(props: dict[str, str], path: str) -> dict:
    """The connection fields a properties file sets (Java client or librdkafka style)."""
    # other keys of a provider's snippet (acks, timeouts, schema registry, ...) are not about the
    # connection's security and are left to the clients' defaults; a mechanism journey does not
    # support (GSSAPI, OAUTHBEARER, AWS_MSK_IAM) is refused by ``check``
    out: dict = {}
    if props.get("bootstrap.servers"):
        out["bootstrap"] = props["bootstrap.servers"]
    if props.get("security.protocol"):
        out["protocol"] = props["security.protocol"]
    mech = props.get("sasl.mechanism") or props.get("sasl.mechanisms")
    if mech:
        out["mechanism"] = mech
    jaas = props.get("sasl.jaas.config")
    if jaas:
        module = jaas.split()[0] if jaas.split() else ""
        if not module.endswith(("PlainLoginModule", "ScramLoginModule")):
            raise KafkaSettingsError(f"{path}: sasl.jaas.config uses {module.rsplit('.', 1)[-1] or 'no login module'}; "
                                     "journey supports PlainLoginModule and ScramLoginModule (user name and password)")
        opts = {m.group(1): next(g for g in m.groups()[1:] if g is not None) for m in _JAAS.finditer(jaas)}
        if "username" in opts:
            out["username"] = _unescape(opts["username"])
        if "password" in opts:
            out["password"] = _unescape(opts["password"])
    if props.get("sasl.username"):
        out["username"] = props["sasl.username"]
    if props.get("sasl.password"):
        out["password"] = props["sasl.password"]
    for loc, kind, what in (("ssl.truststore.location", "ssl.truststore.type", "cafile"),
                            ("ssl.keystore.location", "ssl.keystore.type", "certfile")):
        if props.get(loc):
            t = (props.get(kind) or "JKS").upper()
            if t != "PEM":
                raise KafkaSettingsError(
                    f"{path}: {loc} is a {t} store; journey reads PEM files: set {kind}=PEM with a PEM file "
                    f"(for example `keytool -exportcert -rfc` or `openssl pkcs12 -nodes` converts a {t} store)")
            out[what] = props[loc]
    if props.get("ssl.ca.location"):
        out["cafile"] = props["ssl.ca.location"]
    if props.get("ssl.certificate.location"):
        out["certfile"] = props["ssl.certificate.location"]
    if props.get("ssl.key.location"):
        out["keyfile"] = props["ssl.key.location"]
    if props.get("ssl.key.password"):
        out["key_password"] = props["ssl.key.password"]
    algo = props.get("ssl.endpoint.identification.algorithm")
    if algo is not None:
        out["check_hostname"] = algo.strip().lower() not in ("", "none")
    # paths relative to the properties file
    base = os.path.dirname(os.path.abspath(path))
    for k in ("cafile", "certfile", "keyfile"):
        if out.get(k) and not os.path.isabs(out[k]):
            out[k] = os.path.join(base, out[k])
    return out


# -- helpers -----------------------------------------------------------------------------------------

def _bool(raw: str, name: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise KafkaSettingsError(f"{name} must be true or false, not {raw!r}")


def _has_private_key(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY-----" in f.read(1 << 20)
    except OSError:
        return False


def _suggest(value: str, options) -> str:
    m = difflib.get_close_matches(value, list(options), n=1)
    return f" (did you mean {m[0]}?)" if m else ""


def _ssl_why(e: Exception) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__


# -- failures a person can act on ----------------------------------------------------------------------

class KafkaConnectFailed(ConnectionError):
    """A client could not connect for a reason that waiting will not mend (credentials,
    certificates, a protocol that does not match the listener); the message names it."""


class BrokerUnreachable(Exception):
    """No broker answered at the address within the wait (nothing listens there, the host name
    does not resolve, or nothing answers); the message says which, as far as the client told."""

    explained = True  # its text is the whole message (io.errors.what)

    def __init__(self, broker: str, timeout: float, logged: list[str]):
        self.broker, self.timeout, self.cause = broker, timeout, unreachable_cause(logged)
        super().__init__(f"no Kafka broker answered at {broker} within {timeout:g} s ({self.cause})")


def unreachable_cause(logged: list[str]) -> str:
    """Why a broker address did not answer, from what the Kafka client logged, in a few words."""
    low = " ".join(logged).lower()
    if "errno 111" in low or "refused" in low or "connect call failed" in low:
        return "connection refused: nothing listens on that port"
    if any(s in low for s in ("name or service not known", "errno -2", "errno -3", "errno -5",
                              "nodename nor servname", "no address associated", "name resolution")):
        return "the host name does not resolve"
    return "no answer"


@contextmanager
def client_errors():
    """Collect what the Kafka client logs while it connects (aiokafka raises only "Unable to
    bootstrap" and logs the cause), and keep its per-attempt errors off the console. Yields
    the list of messages; none of them holds a password (the client never logs one)."""
    seen: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            try:
                if len(seen) < 200:
                    seen.append(record.getMessage())
            except Exception:
                pass

    lg = logging.getLogger("aiokafka")
    handler = _Collect(level=logging.DEBUG)
    before = (lg.level, lg.propagate)
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    try:
        yield seen
    finally:
        lg.removeHandler(handler)
        lg.setLevel(before[0])
        lg.propagate = before[1]


def explain(exc: BaseException | None, logged: list[str], conn: KafkaConnection, broker: str) -> str | None:
    """The likely cause of a failed connection, as one sentence saying what to change; None when
    nothing points at the settings (the broker may still be starting: worth waiting for)."""
    text = " ".join([type(exc).__name__, str(exc)] if exc is not None else []) + " " + " ".join(logged)
    low = text.lower()
    mech = conn.mechanism or "?"
    if "saslauthenticationfailed" in low.replace(" ", "") or "authentication failed" in low or \
            "invalid username or password" in low or "authenticationfailed" in low:
        return (f"the broker at {broker} refused the SASL user name or password ({mech}): check "
                f"{ENV}SASL_USERNAME and {ENV}SASL_PASSWORD (with Confluent Cloud, an API key and its secret), and "
                "that the mechanism is the one the cluster's users were created for")
    if "unsupportedsaslmechanism" in low.replace(" ", "") or "unsupported sasl mechanism" in low:
        return (f"the broker at {broker} does not offer the SASL mechanism {mech}: set {ENV}SASL_MECHANISM to one "
                "it offers (MSK: SCRAM-SHA-512; Confluent Cloud: PLAIN)")
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "mismatch" in low or "hostname" in low:
            return (f"the broker's certificate at {broker} does not name that host: connect by the name its "
                    f"certificate carries, or set {ENV}SSL_CHECK_HOSTNAME=false where a name cannot match")
        return (f"the broker's certificate at {broker} is not signed by a CA journey trusts: set {ENV}SSL_CAFILE "
                "(ssl.ca.location, or a PEM ssl.truststore.location) to the CA certificate that signed it")
    if any(s in low for s in ("wrong_version_number", "wrong version number", "record layer failure",
                              "unknown protocol", "packet length too long", "http request")):
        return (f"TLS was tried against a listener at {broker} that does not speak TLS: use the broker's TLS port, "
                f"or set {ENV}SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT")
    if any(s in low for s in ("tlsv1 alert", "sslv3 alert", "alert certificate required", "alert handshake failure",
                              "alert bad certificate", "alert unknown ca")):
        return (f"the broker at {broker} refused the TLS handshake (it may require a client certificate it "
                f"trusts): set {ENV}SSL_CERTFILE and {ENV}SSL_KEYFILE to a certificate its CA signed")
    if conn.sasl and any(s in low for s in ("illegalsaslstate", "unsupportedversion", "sasl handshake")):
        return (f"SASL was tried against a listener at {broker} that does not use SASL: set "
                f"{ENV}SECURITY_PROTOCOL to SSL or PLAINTEXT, or use the broker's SASL port")
    return None


# -- the command line ----------------------------------------------------------------------------------

CONFIG_HELP = ("Kafka client properties file for SASL and TLS, in the Java client's or librdkafka's style: a "
               "provider's snippet works unchanged (env JOURNEY_KAFKA_CONFIG; JOURNEY_KAFKA_SECURITY_PROTOCOL, "
               "JOURNEY_KAFKA_SASL_MECHANISM, JOURNEY_KAFKA_SASL_USERNAME, JOURNEY_KAFKA_SASL_PASSWORD(_FILE), "
               "JOURNEY_KAFKA_SSL_CAFILE, JOURNEY_KAFKA_SSL_CERTFILE, JOURNEY_KAFKA_SSL_KEYFILE and "
               "JOURNEY_KAFKA_SSL_CHECK_HOSTNAME override it)")


def add_arguments(parser) -> None:
    """The connection flag every command that talks to Kafka takes."""
    parser.add_argument("--kafka-config", metavar="FILE", help=CONFIG_HELP)


def from_args(a, command: str) -> KafkaConnection:
    """The command's connection settings; settings that cannot be used end it (exit 2) with
    the message, never a traceback or a secret."""
    try:
        return load(getattr(a, "kafka_config", None))
    except KafkaSettingsError as e:
        import sys

        print(f"journey {command}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def broker_url(flag: str | None, conn: KafkaConnection, default: str = "kafka://127.0.0.1:9092") -> str:
    """The broker: ``--broker``, else ``JOURNEY_BROKER``, else the properties file's
    ``bootstrap.servers``, else ``default``."""
    return flag or os.environ.get("JOURNEY_BROKER") or conn.bootstrap or default


async def probe(url: str, conn: KafkaConnection, timeout: float = 3.0) -> str | None:
    """Ask the first broker address what its listener speaks, when a client's failure says
    nothing (a TLS handshake against a plaintext Kafka port only times out): a plaintext Kafka
    ApiVersions request that gets a Kafka answer means plaintext; a TLS handshake that completes
    means TLS. Returns the message for a mismatch with ``conn``, else None."""
    import asyncio
    import struct

    host, _, port = bootstrap(url).split(",")[0].rpartition(":")
    host = host.strip("[]")
    try:
        port_n = int(port)
    except ValueError:
        return None
    if conn.tls:
        # ApiVersions v0, correlation id 7, client id "journey-probe"
        body = struct.pack(">hhih", 18, 0, 7, 13) + b"journey-probe"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port_n), timeout)
        except (TimeoutError, OSError):
            return None
        try:
            writer.write(struct.pack(">i", len(body)) + body)
            await writer.drain()
            head = await asyncio.wait_for(reader.readexactly(8), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()
        if struct.unpack(">i", head[4:])[0] == 7:
            return (f"TLS was tried against a listener at {url} that does not speak TLS (it answers plaintext "
                    f"Kafka): use the broker's TLS port, or set {ENV}SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT")
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _r, writer = await asyncio.wait_for(asyncio.open_connection(host, port_n, ssl=ctx), timeout)
    except (TimeoutError, OSError, ssl.SSLError):
        return None
    writer.close()
    return (f"the listener at {url} speaks TLS but the connection was plaintext: set {ENV}SECURITY_PROTOCOL to "
            "SSL or SASL_SSL (with the credentials the cluster asks for), or use a --kafka-config file")
