"""Errors for messages: one style for every command."""

from __future__ import annotations


def what(e: BaseException) -> str:
    """An exception for a message: its name, and its text when that says more."""
    name, text = type(e).__name__, str(e).strip()
    if getattr(e, "explained", False) and text:  # it says what happened in words (e.g. BrokerUnreachable)
        return text
    if not text or text == name:
        return name
    return text if text.startswith(name + ":") else f"{name}: {text}"  # aiokafka's text names itself
