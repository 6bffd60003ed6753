"""Write keys of ``journey intake``: from ``JOURNEY_WRITE_KEYS`` (comma-separated)
and/or a file (one a line; blank lines and ``#`` comments ignored). Several keys
are valid at once, so a key is rotated by adding the new one, moving the
senders, then removing the old one. The file is read again when it changes
(a Kubernetes Secret mounted as a file is updated in place), checked at most
once a second. A key is never logged, counted or shown; comparisons take the
same time whatever the key."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import time

ENV = "JOURNEY_WRITE_KEYS"


class NoKeys(Exception):
    pass


class WriteKeys:
    def __init__(self, env_value: str | None = None, path: str | None = None):
        self.from_env = tuple(k.strip() for k in (env_value or "").split(",") if k.strip())
        self.path = path
        self._stamp = None
        self._checked = 0.0
        self.from_file: tuple = ()
        if path:
            self._read()
        if not self.keys:
            raise NoKeys("no write key: set JOURNEY_WRITE_KEYS (comma-separated) or --write-keys FILE (one a "
                         "line); senders authenticate with one of them")

    @property
    def keys(self) -> tuple:
        return self.from_env + self.from_file

    def _read(self) -> None:
        st = os.stat(self.path)
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with open(self.path, encoding="utf-8") as f:
            self.from_file = tuple(k for k in (line.strip() for line in f) if k and not k.startswith("#"))

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self.path or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
                self._read()
        except OSError:
            pass  # a file being replaced: keep the keys read last

    def count(self) -> int:
        """How many keys are valid now (the file read again if it changed): for the metric, never the keys."""
        self._refresh()
        return len(self.keys)

    def valid(self, key) -> bool:
        if not isinstance(key, str) or not key:
            return False
        self._refresh()
        given = key.encode("utf-8", "replace")
        ok = False
        for k in self.keys:
            ok |= hmac.compare_digest(given, k.encode())
        return ok


def basic_user(header: str | None) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header (Segment's SDKs send the write key as the user
    and an empty password); None when there is none."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text.partition(":")[0]
