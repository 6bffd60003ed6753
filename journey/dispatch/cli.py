"""``journey dispatch``: the command line of the webhook dispatcher."""

from __future__ import annotations

import os
import sys

DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def cmd_dispatch(a) -> int:
    from ..core.config import ConfigError
    from .config import load_dispatch_config
    from .signing import new_secret

    if a.new_secret:
        print(new_secret())
        return 0
    path = a.config or os.environ.get("JOURNEY_DISPATCH_CONFIG")
    if not path:
        print("journey dispatch: name the endpoint and route file with --config FILE (or "
              "JOURNEY_DISPATCH_CONFIG); deploy/dispatch.example.toml is a start", file=sys.stderr)
        return 2
    if a.allow_unset_secrets and not a.check:
        print("journey dispatch: --allow-unset-secrets goes with --check only (the dispatcher cannot sign "
              "without its secrets)", file=sys.stderr)
        return 2
    try:
        # --check fails on a secret variable that is not set, as the dispatcher would at start;
        # --allow-unset-secrets makes that a warning (a file checked before deployment)
        cfg = load_dispatch_config(path, check=a.check and a.allow_unset_secrets)
    except ConfigError as e:
        print(f"journey dispatch: {path} has problems:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        if a.check and any(".secrets_env: " in p for p in e.problems):
            print("journey dispatch: the dispatcher would refuse to start here for want of its signing secrets; "
                  "to check the file alone, before deployment, add --allow-unset-secrets", file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(f"journey dispatch: warning: {w}", file=sys.stderr)
    if a.check:
        for name, ep in cfg.endpoints.items():
            # the URL without user:password@ and query (they may hold credentials); header names only
            extra = f", headers {', '.join(sorted(ep.headers))}" if ep.headers else ""
            print(f"endpoint {name}: {ep.shown} ({len(ep.secrets)} secret(s), concurrency {ep.concurrency}, "
                  f"rate {ep.rate or 'unlimited'}/s, {ep.max_attempts} attempts within {ep.retry_budget:.0f}s"
                  f"{extra})")
        for i, r in enumerate(cfg.routes):
            show = lambda s: "*" if s is None else ",".join(sorted(s))  # noqa: E731
            print(f"route {i}: rules {show(r.rules)} kinds {show(r.kinds)} channels {show(r.channels)} -> "
                  f"{', '.join(r.endpoints)}")
        return 0
    from ..io import connection
    from .service import run

    conn = connection.from_args(a, "dispatch")
    broker = connection.broker_url(a.broker, conn, DEFAULT_BROKER)
    port = a.web_port or int(os.environ.get("JOURNEY_DISPATCH_WEB_PORT", "6067"))
    host = a.web_host or os.environ.get("JOURNEY_DISPATCH_WEB_HOST", "127.0.0.1")
    try:
        return run(cfg, broker, host, port, a.allow_replayed, a.loglevel or os.environ.get("JOURNEY_LOGLEVEL", "info"),
                   conn=conn)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"journey dispatch: {e}. Is a Kafka broker listening at {broker}, and port {port} free?",
              file=sys.stderr)
        return 1


def add_commands(sub) -> None:
    from ..io import connection

    d = sub.add_parser(
        "dispatch", help="deliver triggers to webhooks (signed, retried, at least once)",
        description="Read journey.triggers in its own consumer group and POST each trigger (the CloudEvent, "
                    "structured JSON) to the endpoints its route names, signed per Standard Webhooks "
                    "(webhook-id = trigger id). Retries with backoff and Retry-After; 410 disables an endpoint; "
                    "what cannot be delivered goes to journey.triggers.deadletter. Offsets are committed only "
                    "after delivery or dead letter. Only triggers a live worker wrote, no older than "
                    "[dispatch] max_age, are delivered unless --allow-replayed. Serves /metrics, /health and "
                    "/ready on its web port. Stops cleanly on SIGINT/SIGTERM.")
    d.add_argument("--config", metavar="FILE", help="endpoints and routes (TOML or YAML; env JOURNEY_DISPATCH_CONFIG)")
    d.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER; else the --kafka-config file's "
                                    f"bootstrap.servers; default {DEFAULT_BROKER})")
    connection.add_arguments(d)
    d.add_argument("--web-host", help="address of /metrics and /health (env JOURNEY_DISPATCH_WEB_HOST; "
                                      "default 127.0.0.1)")
    d.add_argument("--web-port", type=int, help="port of /metrics and /health (env JOURNEY_DISPATCH_WEB_PORT; "
                                                "default 6067)")
    d.add_argument("--allow-replayed", action="store_true",
                   help="also deliver triggers not written by a live worker (a replay or backtest produced into "
                        "Kafka) and triggers older than max_age: they reach real customers")
    d.add_argument("--check", action="store_true",
                   help="validate the configuration, print it and exit: it fails, as the dispatcher would at start, "
                        "when a secrets_env variable is not set here")
    d.add_argument("--allow-unset-secrets", action="store_true",
                   help="with --check: a secrets_env variable that is not set here is a warning, not a failure "
                        "(to check a file before deployment, away from its secrets)")
    d.add_argument("--new-secret", action="store_true", help="print a new whsec_ signing secret and exit")
    d.add_argument("--loglevel", help="debug, info (default), warning, error")
    d.set_defaults(func=cmd_dispatch)
