"""Erasure (domain.md section 9): what is kept of an erased customer is only the
SHA-256 hex digest of ``<[privacy] erasure_salt>/<key>``, never the id.

A key is a state key: the customer id itself, or ``anon:<id>`` for an
anonymous visitor (so a visitor's digest never equals a customer's).
"""

from __future__ import annotations

import hashlib

ERASED_TYPE = "journey.privacy.erased"
RULE, KIND = "erased", "privacy"


def erasure_hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}/{key}".encode()).hexdigest()


def digests(salt: str, ids) -> set[str]:
    """The digests of customer ids (``journey replay --erased``; a line ``anon:<id>`` names a visitor)."""
    return {erasure_hash(salt, i) for i in ids}


def line_filter(salt: str, erased: set[str]):
    """``erased(line)``: does a record (read or not) carry an erased customer or visitor id?
    For the rare records that are rejected (their dead letter would keep the id's bytes)."""
    from .intake import routing_key

    def is_erased(line: bytes) -> bool:
        if not erased:
            return False
        ids = routing_key(line)
        if ids is None:
            return False
        cid, anon = ids
        return ((cid is not None and erasure_hash(salt, cid) in erased)
                or (anon is not None and erasure_hash(salt, "anon:" + anon) in erased))
    return is_erased
