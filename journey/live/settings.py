"""The worker's settings: flags, else ``JOURNEY_<NAME>`` in the environment, else defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..io import topics

ENV_PREFIX = "JOURNEY_"


@dataclass
class Settings:
    """Worker settings; each may also come from ``JOURNEY_<NAME>`` in the environment."""

    broker: str = "kafka://127.0.0.1:9092"
    store: str = "rocksdb://"
    data_dir: str = "journey-data"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    rules: str | None = None
    lateness: str | None = None      # default: [engine] allowed_lateness of the rules
    idle: str | None = None          # default: [engine] idle_timeout of the rules
    partitions: int = topics.PARTITIONS
    replication: int = 1
    app_id: str = topics.APP_ID
    batch: int = 4000                # records per fetch handed over at once (one step of the loop)
    commit_interval: float = 1.0
    checkpoint: float = 0.5          # seconds between state writes (and acknowledgements)
    fetch_wait: float = 0.05         # the longest a Fetch waits on the broker for new records
    session_timeout: float = 10.0    # a worker that died leaves the group after this long
    stuck_after: float = 60.0        # seconds a partition's event time may stand still while it waits on input
    gc_gen0: int = 50_000            # allocations between young-generation GC passes (Python's default: 700)
    loglevel: str = "warning"
    kafka_config: str | None = None  # Kafka client properties file (JOURNEY_KAFKA_CONFIG; see io.connection)

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        """Defaults, then ``JOURNEY_<NAME>``, then the flags (``overrides``, None: not given).
        A value of the environment that is not a number where one is due: :class:`SettingsError`."""
        environ = os.environ if environ is None else environ
        s = cls()
        s._origin = {}
        for f in s.__dataclass_fields__.values():
            name = ENV_PREFIX + f.name.upper()
            raw = environ.get(name)
            if raw is not None and raw != "":
                setattr(s, f.name, _coerce(f, raw, name))
                s._origin[f.name] = f"{name}={raw}"  # as written
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
                s._origin[k] = "--" + k.replace("_", "-") + f" {v}"
        return s

    def given(self, name: str) -> str:
        """Where a setting came from, for a message: ``--web-port 7``, ``JOURNEY_WEB_PORT=7``, or
        ``the default web_port 6066``."""
        src = getattr(self, "_origin", {}).get(name)
        return src if src is not None else f"the default {name} {getattr(self, name)}"

    def flag(self, name: str) -> str:
        """How to set a setting: its flag, or its variable for the environment-only ones."""
        return "--" + name.replace("_", "-") if name in FLAGS else ENV_PREFIX + name.upper()

    def problems(self) -> list[str]:
        """Every setting that cannot work, one line each saying what to give instead (nothing
        here connects or binds: the web port is :func:`check_web_port`'s)."""
        from ..core.timeutil import TimeError, parse_duration

        out = []
        for name, example in (("lateness", "10s"), ("idle", "5s")):
            v = getattr(self, name)
            if v is not None:
                try:
                    parse_duration(v)
                except TimeError:
                    out.append(f"{self.given(name)}: not a duration; give a number with a unit, e.g. "
                               f"{self.flag(name)} {example} (s, m, h, d)")
        scheme = self.store.split("://", 1)[0].lower() if "://" in self.store else None
        if scheme not in STORES:
            out.append(f"{self.given('store')}: use --store rocksdb:// (state on disk under --data-dir, the "
                       "default) or --store memory:// (rebuilt from the changelog at every start)")
        if not 0 <= self.web_port <= 65535:
            out.append(f"{self.given('web_port')}: a port is 1 to 65535 (or 0 for a free one)")
        for name in ("partitions", "replication", "batch", "gc_gen0"):
            if getattr(self, name) < 1:
                out.append(f"{self.given(name)}: must be at least 1")
        for name in ("commit_interval", "checkpoint", "session_timeout", "stuck_after"):
            if not getattr(self, name) > 0:
                out.append(f"{self.given(name)}: must be more than 0 (seconds)")
        if not self.fetch_wait >= 0:
            out.append(f"{self.given('fetch_wait')}: must be 0 or more (seconds)")
        if self.loglevel.lower() not in LOGLEVELS:
            out.append(f"{self.given('loglevel')}: use {', '.join(LOGLEVELS)}")
        try:
            from ..io.kafka import bootstrap

            bootstrap(self.broker)
        except ValueError as e:
            out.append(f"{self.given('broker')}: {e}")
        return out


FLAGS = ("broker", "store", "data_dir", "web_host", "web_port", "rules", "lateness", "idle", "partitions",
         "replication", "loglevel", "kafka_config")
STORES = ("rocksdb", "memory")
LOGLEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """A setting of the environment cannot be read (the message says which and what to give)."""


def _coerce(f, raw: str, name: str):
    t = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
    except ValueError:
        what = "a whole number" if t.startswith("int") else "a number"
        raise SettingsError(f"{name}={raw}: expected {what}") from None
    return raw


def check_web_port(host: str, port: int, given: str, given_host: str | None = None) -> int:
    """The port the health and metrics server will listen on: ``port``, or a free one for 0.
    One that is taken or an address this machine does not have: :class:`SettingsError` saying
    what to pass instead (before anything connects, so the worker never half-starts)."""
    import errno
    import socket

    given_host = given_host or f"--web-host {host}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        raise SettingsError(f"{given_host}: not an address of this machine (give e.g. --web-host 127.0.0.1, or "
                            "0.0.0.0 for every interface)") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                faust = "; 6066 is Faust's default too, so another Faust app may hold it" if port == 6066 else ""
                raise SettingsError(f"port {port} on {host} is taken ({given}{faust}): pass --web-port N for a "
                                    "free port N, or --web-port 0 for any free one") from None
            if e.errno == errno.EACCES:
                raise SettingsError(f"port {port} on {host} needs privileges ({given}): pass --web-port N with N "
                                    "above 1023, or --web-port 0 for any free one") from None
            raise SettingsError(f"{given_host}: cannot listen there ({e.strerror}): give an address of this "
                                "machine (e.g. --web-host 127.0.0.1, or 0.0.0.0 for every interface)") from None
        return s.getsockname()[1]
