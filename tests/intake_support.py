"""Helpers for the tests of ``journey intake``: a child process on a real broker, raw HTTP requests."""

from __future__ import annotations

import base64
import gzip
import http.client
import time

import orjson
from live_support import stop_process, wait_for

from journey.live.broker import free_port, spawn_intake


class Intake:
    """A ``journey intake`` child process."""

    def __init__(self, broker: str, tmp_path, keys: str = "wk-test", args: tuple = (), name: str = "intake",
                 extra_env: dict | None = None):
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.proc = spawn_intake(broker, port=self.port, write_keys=keys, log_path=str(self.log), args=args,
                                 extra_env=extra_env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> dict:
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"intake exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            status, body, _h = request(self.port, "GET", "/ready")
            return body if status == 200 else None
        return wait_for(ok, timeout, "the intake to be ready", every=0.2)

    def post(self, path: str, body, key: str | None = "wk-test", gz: bool = False, headers: dict | None = None,
             timeout: float = 30):
        return post(self.port, path, body, key, gz, headers, timeout)

    def metrics(self) -> str:
        return request(self.port, "GET", "/metrics")[1].decode()

    def stop(self) -> int:
        return stop_process(self.proc)


def request(port: int, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 30):
    """(status, body bytes or decoded JSON, headers); a refused connection is (None, b'', {})."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    except (ConnectionError, OSError):
        return None, b"", {}
    finally:
        c.close()
    if hdrs.get("content-type", "").startswith("application/json"):
        return r.status, orjson.loads(raw), hdrs
    return r.status, raw, hdrs


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def post(port: int, path: str, body, key: str | None = "wk-test", gz: bool = False, headers: dict | None = None,
         timeout: float = 30):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    h = {"Content-Type": "application/json"}
    if key is not None:
        h["Authorization"] = basic(key)
    if gz:
        data = gzip.compress(data)
        h["Content-Encoding"] = "gzip"
    h.update(headers or {})
    return request(port, "POST", path, data, h, timeout)


def metric(text: str, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def now_ms() -> int:
    return int(time.time() * 1000)
