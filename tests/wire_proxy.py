"""Faults on the wire: a TCP proxy on loopback between the Kafka clients and the broker,
driven by the test.

The broker advertises the proxy's address (``EmbeddedBroker(advertised_port=...)``), so
every connection a client makes, bootstrap and after metadata, goes through it. The proxy
runs its own asyncio loop in a thread; the test calls it synchronously:

* ``rate``: a slow link (bytes per second), so that the clients' work takes long enough
  for a fault to land in the middle of it;
* :meth:`WireProxy.reset` resets every open connection, both halves (SO_LINGER 0: RST);
* :meth:`WireProxy.stall` holds all traffic, both directions, of every connection (new
  ones included) for N seconds: nothing is read or written, TCP's own flow control does
  the rest, no connection is closed;
* :meth:`WireProxy.refuse` closes the listening socket for N seconds (a connect is
  refused: ECONNREFUSED), keeping the open connections, or resetting them at once or
  after a while.

Connections made from the test process itself (its read-backs of the topics) are
*exempt*: never stalled nor reset, so the test can look at the broker while the
others cannot (a refusal refuses its new connections too: the listening socket is
closed; :class:`live_support.TopicWatch` keeps one open). A
connection is the test's when its client port belongs to a socket of this process
(``/proc/self/net/tcp`` and ``/proc/self/fd``). The proxy's port is taken outside the
kernel's ephemeral range, so no outgoing connection can take it while it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import threading
import time


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def port_outside_ephemeral_range() -> int:
    """A free loopback port that no outgoing connection can be given meanwhile."""
    lo, hi = _ephemeral_range()
    candidates = [p for p in range(10000, 65535) if not lo <= p <= hi]
    rnd = random.SystemRandom()
    for _ in range(200):
        p = rnd.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    raise RuntimeError("no free port outside the ephemeral range")


def _own_ports() -> set[int]:
    """Local ports of this process's TCP sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(self, n: int, peer: int, exempt: bool):
        self.n, self.peer, self.exempt = n, peer, exempt
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []
        self.bytes = [0, 0]   # client -> broker, broker -> client
        self.closed = False


class WireProxy:
    def __init__(self, upstream_port: int, port: int | None = None, host: str = "127.0.0.1",
                 rate: float | None = None):
        """``rate``: bytes per second passed on, all connections (but the test's) and both
        directions together (a slow link: the clients' work then takes seconds, not a moment,
        and a fault can land in the middle of it)."""
        assert host.startswith("127."), "loopback only"
        self.host, self.upstream = host, upstream_port
        self.rate = rate
        self._free_at = 0.0     # the link's clock: when it is free to pass the next bytes
        self.port = port or port_outside_ephemeral_range()
        self.url = f"kafka://{host}:{self.port}"
        self.conns: dict[int, _Conn] = {}
        self.events: list[tuple[float, str]] = []   # (monotonic, what) of every fault, for the failure text
        self.accepted = 0
        self.resets = 0
        self.refused_until = 0.0
        self._n = 0
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wire-proxy", daemon=True)

    # -- the test's side (any thread) ----------------------------------------------------------------------

    def start(self) -> WireProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the wire proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"the wire proxy did not start: {self._error}")
        return self

    def _call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def reset(self) -> int:
        """Reset every open connection but the test's own; the number reset."""
        return self._call(self._reset())

    def stall(self, seconds: float, wait: bool = False) -> None:
        """Hold all traffic of every connection but the test's own for ``seconds`` (``wait``:
        return when it flows again)."""
        self._call(self._stall(seconds))
        if wait:
            time.sleep(seconds)

    def refuse(self, seconds: float, drop_after: float | None = 0.0, wait: bool = False) -> None:
        """Refuse new connections for ``seconds`` (the listening socket is closed). The open ones
        (but the test's own) are kept for ``drop_after`` seconds, then reset (0: at once, a broker
        gone; None: kept throughout)."""
        self._call(self._refuse(seconds, drop_after))
        if wait:
            time.sleep(seconds)

    def wait_over(self, timeout: float = 10) -> None:
        """Return once traffic flows and new connections are accepted again (the fault's own
        timer may fire a little after the test's)."""
        deadline = time.monotonic() + timeout
        while not (self._server is not None and self._flowing.is_set()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy is still faulty {timeout:g} s after the fault's end: {self.describe()}")
            time.sleep(0.02)

    def open_connections(self, exempt: bool = False) -> int:
        return sum(1 for c in list(self.conns.values()) if not c.closed and c.exempt == exempt)

    def traffic(self) -> int:
        """Bytes moved so far by the connections that are not the test's."""
        return sum(sum(c.bytes) for c in list(self.conns.values()) if not c.exempt)

    def describe(self) -> str:
        return (f"proxy :{self.port} -> :{self.upstream}: {self.accepted} connection(s) accepted, "
                f"{self.resets} reset; faults: {[(round(t, 1), w) for t, w in self.events]}")

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the proxy's loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        try:
            self._loop.run_until_complete(self._listen())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True,
                                                  backlog=128)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in list(self.conns.values()):
            self._kill(c)

    def _note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[1]
        self._n += 1
        c = _Conn(self._n, peer, exempt=peer in _own_ports())
        self.conns[c.n] = c
        self.accepted += 1
        c.writers.append(writer)
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.upstream), 10)
        except (OSError, TimeoutError):
            self._kill(c)
            return
        c.writers.append(up_w)
        if c.closed:  # reset while connecting upstream
            self._kill(c)
            return
        c.tasks = [asyncio.create_task(self._pump(c, reader, up_w, 0)),
                   asyncio.create_task(self._pump(c, up_r, writer, 1))]
        await asyncio.gather(*c.tasks, return_exceptions=True)
        self._kill(c, rst=False)

    async def _pump(self, c: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: int) -> None:
        flowing = self._flowing
        try:
            while True:
                if not c.exempt and not flowing.is_set():
                    await flowing.wait()
                data = await src.read(16384)
                if not data:
                    break
                if not c.exempt:
                    if self.rate:
                        await self._link(len(data))
                    if not flowing.is_set():
                        await flowing.wait()      # read before the stall began: held, not passed on
                if c.closed:
                    return
                dst.write(data)
                await dst.drain()
                c.bytes[way] += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # one side closed: close the connection whole (as a broker or client would see it)
            self._kill(c, rst=False)

    async def _link(self, n: int) -> None:
        """Wait for the slow link to pass ``n`` bytes (first come, first served)."""
        now = self._loop.time()
        start = max(now, self._free_at)
        self._free_at = start + n / self.rate
        if self._free_at > now:
            await asyncio.sleep(self._free_at - now)

    def _kill(self, c: _Conn, rst: bool = True) -> None:
        if c.closed:
            return
        c.closed = True
        for w in c.writers:
            if rst:
                _rst(w)
            else:
                with contextlib.suppress(Exception):
                    w.close()
        for t in c.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.conns.pop(c.n, None)

    async def _reset(self) -> int:
        victims = [c for c in self.conns.values() if not c.closed and not c.exempt]
        for c in victims:
            self._kill(c, rst=True)
        self.resets += len(victims)
        self._note(f"reset {len(victims)}")
        return len(victims)

    async def _stall(self, seconds: float) -> None:
        self._flowing.clear()
        self._note(f"stall {seconds:g}s")

        def flow():
            self._flowing.set()
            self._note("flowing")
        self._loop.call_later(seconds, flow)

    async def _refuse(self, seconds: float, drop_after: float | None) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.refused_until = time.monotonic() + seconds
        self._note(f"refuse {seconds:g}s, " + ("keep the open connections" if drop_after is None else
                                               f"drop the open ones after {drop_after:g}s"))
        if drop_after == 0:
            await self._reset()
        elif drop_after is not None:
            self._loop.call_later(drop_after, lambda: self._loop.create_task(self._reset()))

        async def reopen():
            await asyncio.sleep(seconds)
            for _ in range(50):
                try:
                    await self._listen()
                    self._note("accepting")
                    return
                except OSError:
                    await asyncio.sleep(0.1)
            self._note("could not listen again")
        self._loop.create_task(reopen())
