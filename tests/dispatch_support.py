"""A real HTTP receiver on loopback for the dispatcher tests (aiohttp, in a thread).

Answers are scripted per trigger id (the webhook-id): a list of steps, each

* a status, ``(status, headers)`` or ``(status, headers, text)``;
* ``("sleep", seconds, status)``;
* ``("body", status, nbytes)``: a chunked body of ``nbytes`` generated on the
  fly (1 MiB writes, at most 120 s); the bytes actually written (the
  client may hang up) are in :attr:`Receiver.sent`;
* ``("disconnect",)``: the connection is dropped without an answer.

After the script, ``default`` (200). Any method on any ``/{name}`` is
answered (so a redirect that is followed shows as a request to its target).
Every request is recorded with its arrival time, method, path (``endpoint``:
the ``{name}``), query, headers and body.
"""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web

CHUNK = 1 << 20
BODY_SECONDS = 120


class Receiver:
    def __init__(self, scripts: dict | None = None, delay: float = 0.0, default=200):
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.delay = delay
        self.default = default
        self.requests: list[dict] = []
        self.sent: dict[str, list[int]] = {}      # webhook-id -> bytes written per ("body", ...) answer
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def _handle(self, request: web.Request):
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        with self.lock:
            self.requests.append({"at": time.monotonic(), "endpoint": request.match_info["name"],
                                  "method": request.method, "query": request.query_string,
                                  "headers": dict(request.headers), "body": body, "id": msg_id})
            script = self.scripts.get(msg_id)
            step = script.pop(0) if script else self.default
        if self.delay:
            await asyncio.sleep(self.delay)
        headers, text = {}, None
        if isinstance(step, tuple) and step[0] == "sleep":
            await asyncio.sleep(step[1])
            step = step[2]
        if isinstance(step, tuple) and step[0] == "body":
            return await self._stream(request, msg_id, step[1], step[2])
        if isinstance(step, tuple) and step[0] == "disconnect":
            request.transport.abort()
            return web.Response(status=500)
        if isinstance(step, tuple):
            step, headers, *more = step
            text = more[0] if more else None
        if text is None:
            text = "ok" if step < 300 else "no"
        return web.Response(status=step, headers=headers, text=text)

    async def _stream(self, request, msg_id: str, status: int, nbytes: int):
        resp = web.StreamResponse(status=status, headers={"content-type": "text/plain"})
        resp.enable_chunked_encoding()
        sent = 0
        chunk = b"x" * CHUNK
        try:
            await resp.prepare(request)
            deadline = time.monotonic() + BODY_SECONDS
            while sent < nbytes and time.monotonic() < deadline:
                part = chunk[:min(CHUNK, nbytes - sent)]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            pass                        # the client hung up
        finally:
            with self.lock:
                self.sent.setdefault(msg_id, []).append(sent)
        return resp

    def of(self, msg_id: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["id"] == msg_id]

    def ids(self) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.requests]

    def stop(self):
        async def down():
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
