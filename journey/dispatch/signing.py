"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; each
signature is ``v1,`` and the base64 HMAC-SHA256 of it under one secret's key.
During a rotation every current secret signs, space-separated, so a receiver
holding either the old or the new secret verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _secrets


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(keys, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
    }


def new_secret() -> str:
    """A fresh ``whsec_`` secret with a 32-byte key."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode()
