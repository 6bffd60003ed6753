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
        environ = os.environ if environ is None else environ
        s = cls()
        for f in s.__dataclass_fields__.values():
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                setattr(s, f.name, _coerce(f, raw))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s


def _coerce(f, raw: str):
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if t.startswith("int"):
        return int(raw)
    if t.startswith("float"):
        return float(raw)
    return raw
