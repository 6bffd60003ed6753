"""The dispatcher's configuration file: endpoints and routes, validated whole.

    [dispatch]
    max_age = "24h"                 # older triggers (event time vs now) are not delivered

    [endpoints.crm]
    url = "https://crm.example.com/hooks/journey"
    secrets_env = "CRM_WEBHOOK_SECRETS"   # whsec_... values, comma-separated (or: secrets = [...])
    concurrency = 8
    rate = 50                       # requests per second (0: no limit)

    [[routes]]
    rules = ["cart_abandoned"]      # or "*"; kinds and channels likewise
    endpoints = ["crm"]

``load_dispatch_config(path)`` raises :class:`~journey.core.params.ConfigError`
listing every problem.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..core.params import ConfigError, Param, section, suggest
from ..io import topics
from ..io.rulefile import read_table
from .redact import hidden_parts, redact_url, scrub

SECRET_PREFIX = "whsec_"

DISPATCH = {
    "group": Param("str", topics.DISPATCH_GROUP, "Kafka consumer group of the dispatchers (default journey-dispatch, "
                                                  "after JOURNEY_TOPIC_PREFIX)"),
    "max_age": Param("duration", "24h", "a trigger whose time is older than this when read is not delivered "
                                        "(a backfill through Kafka must not message customers); 0: no limit"),
    "delivered_memory": Param("int", 100_000, "delivered trigger ids remembered per partition across restarts",
                              minimum=0),
    "max_in_flight": Param("int", 10_000, "triggers read but not yet finished, at most (then reading pauses); "
                                          "must exceed the endpoints' max_pending together", minimum=1),
}

ENDPOINT = {
    "url": Param("str", "http://127.0.0.1:1/", "where triggers are POSTed"),
    "secrets": Param("strs", [], "signing secrets (whsec_...); the first signs, all are sent during a rotation"),
    "secrets_env": Param("str", "-", "an environment variable holding the secrets, comma-separated"),
    "timeout": Param("duration", "10s", "one attempt's time limit"),
    "concurrency": Param("int", 8, "requests in flight to this endpoint at most", minimum=1),
    "rate": Param("number", 0, "requests per second at most (0: no limit)", minimum=0),
    "max_attempts": Param("int", 8, "attempts per trigger, the first included", minimum=1),
    "retry_budget": Param("duration", "1h", "time from the first attempt after which a trigger is dead-lettered"),
    "backoff_base": Param("duration", "1s", "wait before the first retry; doubles each retry"),
    "backoff_max": Param("duration", "5m", "the longest wait between two attempts"),
    "max_retry_after": Param("duration", "1h", "the longest Retry-After honoured (longer: dead letter)"),
    "max_pending": Param("int", 1_000, "triggers waiting for this endpoint at most; beyond, new ones are "
                                       "dead-lettered so a stuck endpoint cannot hold up the others", minimum=1),
    "headers": Param("table", {}, "extra HTTP headers"),
}

ROUTE_KEYS = ("rules", "kinds", "channels", "endpoints")

# set by the dispatcher or by the HTTP client (framing, hop-by-hop): a configured value breaks the request
RESERVED_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "connection", "keep-alive",
                              "upgrade", "te", "trailer", "expect", "accept-encoding"})
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # an RFC 9110 token
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")                    # visible ASCII, space and tab
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    secrets: tuple[bytes, ...]          # decoded keys
    timeout: float                      # seconds
    concurrency: int
    rate: float
    max_attempts: int
    retry_budget: float
    backoff_base: float
    backoff_max: float
    max_retry_after: float
    max_pending: int
    headers: dict = field(default_factory=dict)
    shown: str = ""                     # the URL without credentials and query: what logs and --check show
    hidden: tuple = ()                  # (text, replacement) pairs scrubbed from errors (redact.hidden_parts)

    def __post_init__(self):
        if not self.shown:
            object.__setattr__(self, "shown", redact_url(self.url))
        if not self.hidden:
            object.__setattr__(self, "hidden", hidden_parts(self.url, tuple(self.headers.values())))


@dataclass(frozen=True)
class Route:
    rules: frozenset | None             # None: any
    kinds: frozenset | None
    channels: frozenset | None
    endpoints: tuple[str, ...]

    def matches(self, rule: str, kind: str, channel: str | None) -> bool:
        return ((self.rules is None or rule in self.rules) and (self.kinds is None or kind in self.kinds)
                and (self.channels is None or channel in self.channels))


@dataclass(frozen=True)
class DispatchConfig:
    group: str
    max_age: float                      # seconds; 0: no limit
    delivered_memory: int
    max_in_flight: int
    endpoints: dict[str, Endpoint]
    routes: tuple[Route, ...]
    source: str = "config"
    warnings: tuple[str, ...] = ()

    def route(self, trigger: dict) -> list[str]:
        """Endpoint names a trigger goes to (each once, in route order)."""
        data = trigger.get("data") or {}
        rule, kind, channel = data.get("rule"), data.get("kind"), data.get("channel")
        out: list[str] = []
        for r in self.routes:
            if r.matches(rule, kind, channel):
                out += [e for e in r.endpoints if e not in out]
        return out


def decode_secret(value: str) -> bytes:
    """``whsec_<base64>`` -> the key bytes (Standard Webhooks)."""
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
        raise ValueError("a secret starts with whsec_ followed by base64 (e.g. from `journey dispatch --new-secret`)")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX):], validate=True)
    except Exception:
        raise ValueError("the part after whsec_ is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the key is {len(key)} bytes; use 24 to 64 (32 recommended)")
    return key


def _strings(v, path: str, problems: list, allow_any: bool = False):
    if allow_any and v == "*":
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        alt = ' or "*"' if allow_any else ""
        problems.append(f"{path}: expected a list of names{alt}, got {v!r}")
        return None
    return v


def _url_problems(url: str, headers: dict, path: str) -> list[str]:
    """What makes ``url`` unusable for a POST, found now rather than at the first send; never echoes the
    URL's credentials or query."""
    shown, hidden = redact_url(url), hidden_parts(url)
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        return [f"{path}: {shown!r} is not a valid URL ({scrub(e, hidden)})"]
    if u.scheme not in ("http", "https") or not u.hostname:
        return [f"{path}: expected an http:// or https:// address, got {shown!r}"]
    out = []
    host = u.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = None
        if ascii_host is None or not HOST_NAME.fullmatch(ascii_host) or len(ascii_host) > 253:
            out.append(f"{path}: {scrub(host, hidden)!r} is not a valid host name")
    if port == 0:
        out.append(f"{path}: port 0 cannot be connected to")
    try:
        from yarl import URL

        URL(url)
    except (ValueError, TypeError) as e:
        out.append(f"{path}: the HTTP client refuses {shown!r} ({scrub(e, hidden)})")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in url):
        out.append(f"{path}: contains white space or control characters")
    if "@" in u.netloc and u.netloc.rpartition("@")[0]:
        if any(str(k).lower() == "authorization" for k in headers):
            out.append(f"{path}: credentials in the URL (user:password@) and an authorization header cannot "
                       f"both be sent; keep one of them")
    return out


def _header_problems(headers: dict, path: str) -> list[str]:
    out = []
    for k, v in headers.items():
        if not isinstance(k, str) or not HEADER_NAME.fullmatch(k):
            out.append(f"{path}: {k!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)")
        elif k.lower().startswith("webhook-") or k.lower() in RESERVED_HEADERS:
            out.append(f"{path}: {k} is set by the dispatcher or its HTTP client (content-type, webhook-*, "
                       f"and the framing headers {', '.join(sorted(RESERVED_HEADERS - {'content-type'}))})")
        if not isinstance(v, str):
            out.append(f"{path}.{k}: the value must be a string")
        elif not HEADER_VALUE.fullmatch(v):
            out.append(f"{path}.{k}: the value must be printable ASCII (no line breaks or control characters)")
    return out


def _finite(params: dict[str, Param], given, path: str, problems: list) -> dict:
    """``given`` without the values that would break their parsing (inf, nan, durations too long for a
    number), each reported: ``section`` then sees only values it can judge."""
    if not isinstance(given, dict):
        return given
    out = {}
    for k, v in given.items():
        p = params.get(k)
        if p is not None and p.kind in ("int", "number", "duration") and isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{path}.{k}: must be a finite number, got {v!r}")
            continue
        if p is not None and p.kind == "duration":
            try:
                p.parse(v, f"{path}.{k}")
            except OverflowError:
                problems.append(f"{path}.{k}: too long a duration")
                continue
            except ValueError:
                pass                    # section reports it
        out[k] = v
    return out


def parse_dispatch_config(data: dict, source: str = "config", env=os.environ, check: bool = False) -> DispatchConfig:
    """``check``: only validating the file (``--check --allow-unset-secrets``): a secret variable
    that is not set in this environment is a warning, not a problem."""
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a table at the top level"])
    for name in data:
        if name not in ("dispatch", "endpoints", "routes"):
            problems.append(f"{name}: unknown section{suggest(name, ['dispatch', 'endpoints', 'routes'])}")
    d = section(DISPATCH, _finite(DISPATCH, data.get("dispatch", {}), "dispatch", problems), "dispatch", problems)

    endpoints: dict[str, Endpoint] = {}
    given = data.get("endpoints", {})
    if not isinstance(given, dict) or not given:
        problems.append("endpoints: define at least one, e.g. [endpoints.crm] url = \"https://...\"")
        given = {}
    for name, spec in given.items():
        path = f"endpoints.{name}"
        if isinstance(spec, dict) and "url" not in spec:
            problems.append(f"{path}.url: missing (where to POST the triggers)")
        e = section(ENDPOINT, _finite(ENDPOINT, spec, path, problems), path, problems)
        problems += _url_problems(e.url, e.headers, f"{path}.url")
        if e.timeout <= 0:
            problems.append(f"{path}.timeout: must be more than 0 (an attempt without a time limit can hang)")
        raw = list(e.secrets)
        env_missing = False
        if e.secrets_env != "-":
            from_env = env.get(e.secrets_env)
            if from_env is None:
                env_missing = True
                (warnings if check else problems).append(
                    f"{path}.secrets_env: the environment variable {e.secrets_env} is not set (its value: whsec_ "
                    f"secrets, comma-separated; make one with `journey dispatch --new-secret`, e.g. "
                    f"export {e.secrets_env}=$(journey dispatch --new-secret))")
            else:
                raw += [s.strip() for s in from_env.replace(" ", ",").split(",") if s.strip()]
        if not raw and not env_missing:
            problems.append(f"{path}: no signing secret; set secrets = [\"whsec_...\"] or secrets_env "
                            f"(generate one with `journey dispatch --new-secret`)")
        keys = []
        for i, s in enumerate(raw):
            try:
                keys.append(decode_secret(s))
            except ValueError as err:
                problems.append(f"{path}.secrets[{i}]: {err}")  # the value itself is never printed
        problems += _header_problems(e.headers, f"{path}.headers")
        if e.backoff_max < e.backoff_base:
            problems.append(f"{path}.backoff_max: must not be shorter than backoff_base")
        endpoints[name] = Endpoint(
            name=name, url=e.url, secrets=tuple(keys), timeout=e.timeout / 1000, concurrency=e.concurrency,
            rate=e.rate, max_attempts=e.max_attempts, retry_budget=e.retry_budget / 1000,
            backoff_base=e.backoff_base / 1000, backoff_max=e.backoff_max / 1000,
            max_retry_after=e.max_retry_after / 1000, max_pending=e.max_pending, headers=dict(e.headers))

    routes: list[Route] = []
    given_routes = data.get("routes", [])
    if not isinstance(given_routes, list) or not given_routes:
        problems.append("routes: define at least one, e.g. [[routes]] rules = \"*\" endpoints = [\"crm\"]")
        given_routes = []
    for i, r in enumerate(given_routes):
        path = f"routes[{i}]"
        if not isinstance(r, dict):
            problems.append(f"{path}: expected a table")
            continue
        for k in r:
            if k not in ROUTE_KEYS:
                problems.append(f"{path}.{k}: unknown setting{suggest(k, ROUTE_KEYS)}")
        sets = {k: _strings(r.get(k, "*"), f"{path}.{k}", problems, allow_any=True) for k in ROUTE_KEYS[:3]}
        if "kinds" in r and sets["kinds"]:
            for k in sets["kinds"]:
                if k not in ("recovery", "recognition", "privacy"):
                    problems.append(f"{path}.kinds: {k!r} is not a kind (recovery, recognition, privacy: "
                                    "the journey.privacy.erased records)")
        if "rules" in r and sets["rules"]:
            from ..core.rules import REGISTRY

            for name in sets["rules"]:
                if name not in REGISTRY and name != "erased":  # erased: the journey.privacy.erased records
                    close = suggest(name, REGISTRY) if difflib.get_close_matches(name, REGISTRY, 1, 0.85) else ""
                    if close:  # a built-in rule's name misspelt
                        problems.append(f"{path}.rules: unknown rule {name!r}{close}")
                    else:  # a journey of the rule file is legal: the dispatcher does not read the rule file
                        warnings.append(f"{path}.rules: {name!r} is not a built-in rule; fine if it is a journey "
                                        "of your rule file")
        eps = _strings(r.get("endpoints"), f"{path}.endpoints", problems) or []
        for name in eps:
            if name not in endpoints and name in (given or {}):
                continue
            if name not in given:
                problems.append(f"{path}.endpoints: no endpoint named {name!r}{suggest(name, given)}")
        routes.append(Route(*(frozenset(sets[k]) if sets[k] is not None else None for k in ROUTE_KEYS[:3]),
                            tuple(eps)))
    backlog = sum(e.max_pending for e in endpoints.values())
    if endpoints and d.max_in_flight <= backlog:
        problems.append(f"dispatch.max_in_flight: {d.max_in_flight} does not exceed the endpoints' max_pending "
                        f"together ({backlog}), so stuck endpoints could stall every other delivery")
    if problems:
        raise ConfigError(problems)
    return DispatchConfig(group=d.group, max_age=d.max_age / 1000, delivered_memory=d.delivered_memory,
                          max_in_flight=d.max_in_flight, endpoints=endpoints, routes=tuple(routes), source=source,
                          warnings=tuple(warnings))


def load_dispatch_config(path: str, env=os.environ, check: bool = False) -> DispatchConfig:
    return parse_dispatch_config(read_table(path), source=str(path), env=env, check=check)
