"""A real HTTP receiver on loopback for the dispatcher tests (aiohttp, in a thread).

Answers are scripted per trigger id (the webhook-id): a list of steps, each a
status, ``(status, headers)`` or ``("sleep", seconds, status)``; after the
script, 200. Every request is recorded with its arrival time, headers and body.
"""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web


class Receiver:
    def __init__(self, scripts: dict | None = None, delay: float = 0.0, default=200):
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.delay = delay
        self.default = default
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
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
                                  "headers": dict(request.headers), "body": body, "id": msg_id})
            script = self.scripts.get(msg_id)
            step = script.pop(0) if script else self.default
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {}
        if isinstance(step, tuple) and step[0] == "sleep":
            await asyncio.sleep(step[1])
            step = step[2]
        if isinstance(step, tuple):
            step, headers = step
        return web.Response(status=step, headers=headers, text="ok" if step < 300 else "no")

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
