"""``journey intake``: the command line of the HTTP intake."""

from __future__ import annotations

import os
import sys

DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def cmd_intake(a) -> int:
    from ..io import connection
    from .keys import ENV, NoKeys, WriteKeys
    from .service import Intake, MissingTopics, run

    path = a.write_keys or os.environ.get("JOURNEY_WRITE_KEYS_FILE")
    try:
        keys = WriteKeys(os.environ.get(ENV), path)
    except NoKeys as e:
        print(f"journey intake: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"journey intake: cannot read the write-key file {path}: {e.strerror}", file=sys.stderr)
        return 2
    conn = connection.from_args(a, "intake")
    broker = connection.broker_url(a.broker, conn, DEFAULT_BROKER)
    host = a.host or os.environ.get("JOURNEY_INTAKE_HOST", "127.0.0.1")
    port = a.port if a.port is not None else int(os.environ.get("JOURNEY_INTAKE_PORT", "8088"))
    intake = Intake(broker, keys, host, port, ack_timeout=a.ack_timeout, max_in_flight=int(a.max_in_flight * (1 << 20)),
                    create_topics=not a.no_create_topics, conn=conn)
    try:
        return run(intake, a.loglevel or os.environ.get("JOURNEY_LOGLEVEL", "info"))
    except KeyboardInterrupt:
        return 0
    except (connection.KafkaConnectFailed, connection.BrokerUnreachable, MissingTopics) as e:
        print(f"journey intake: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"journey intake: {e}. Is a Kafka broker listening at {broker}, and port {port} free?", file=sys.stderr)
        return 1


def add_commands(sub) -> None:
    from ..io import connection

    d = sub.add_parser(
        "intake", help="take events over HTTP from Segment and RudderStack SDKs (Segment's Tracking API)",
        description="Serve Segment's HTTP Tracking API (POST /v1/track, /v1/identify, /v1/page, /v1/screen, "
                    "/v1/group, /v1/alias, /v1/batch, /v1/import, and analytics.js's /v1/t, /p, /i, /s, /g, /a, /b) "
                    "so Segment's and RudderStack's SDKs can point at it. A request authenticates with a write key (HTTP Basic user name, or 'writeKey' in the "
                    "body); bodies may be gzip; over 32 KB a message, over 500 KB a request: 400. Each message is "
                    "checked as the worker checks it: valid ones go to the source topic of their type keyed by "
                    "userId (else anonymousId), invalid ones to journey.deadletter. The answer is 200 only once "
                    "Kafka has acknowledged every message (acks=all); 503 with Retry-After when it has not in "
                    "time, 429 when too many bytes are in flight. Serves /health, /ready and /metrics on the "
                    "same port. Stops cleanly on SIGINT/SIGTERM, answering the requests it has.")
    d.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER; else the --kafka-config file's "
                                    f"bootstrap.servers; default {DEFAULT_BROKER})")
    connection.add_arguments(d)
    d.add_argument("--host", help="address to listen on (env JOURNEY_INTAKE_HOST; default 127.0.0.1)")
    d.add_argument("--port", type=int, help="port to listen on (env JOURNEY_INTAKE_PORT; default 8088)")
    d.add_argument("--write-keys", metavar="FILE",
                   help="file of write keys, one a line, read again when it changes (env JOURNEY_WRITE_KEYS_FILE); "
                        "keys may also come from JOURNEY_WRITE_KEYS (comma-separated); both may be used")
    d.add_argument("--ack-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long a request waits for Kafka's acknowledgement before it is answered 503 (default 5; "
                        "the SDKs time out after 10 to 15)")
    d.add_argument("--max-in-flight", type=float, default=64.0, metavar="MB",
                   help="megabytes of requests worked on at once beyond which new ones get 429 (default 64)")
    d.add_argument("--no-create-topics", action="store_true",
                   help="do not create missing topics at start (for a principal that may only write)")
    d.add_argument("--loglevel", help="debug, info (default), warning, error; the Kafka and HTTP libraries "
                                      "log at info at most (their debug lines would carry the messages)")
    d.set_defaults(func=cmd_intake)
