"""Showing an endpoint URL without what it may hide: ``user:password@`` and the
query string often carry credentials (``?token=...``). Pure.

* :func:`redact_url` is the form every log line, dead letter and ``--check``
  line shows: ``https://***@host:port/path?***`` (the path stays: it tells
  endpoints apart; the fragment goes too).
* :func:`hidden_parts` lists the URL in its renderings and its secret parts,
  and :func:`scrub` removes them from free text (an exception's message, a
  receiver's answer, a Location header) before that text is logged or
  dead-lettered.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlsplit

HIDDEN = "***"
MIN_SECRET = 3          # shorter fragments are not scrubbed from free text (they would mangle it)


def redact_url(url) -> str:
    """``url`` with credentials and query (and fragment) replaced by ``***``; never raises."""
    if not isinstance(url, str):
        url = str(url)
    try:
        u = urlsplit(url)
    except ValueError:
        return HIDDEN
    if not u.scheme and not u.netloc:
        # a relative reference (a Location header may be one): keep the path only
        path = url.split("?", 1)[0].split("#", 1)[0]
        return path + ("?" + HIDDEN if ("?" in url or "#" in url) else "")
    host = u.netloc.rpartition("@")[2]
    out = f"{u.scheme}://" + (f"{HIDDEN}@" if "@" in u.netloc else "") + host + u.path
    if u.query or u.fragment or url.rstrip().endswith(("?", "#")):
        out += "?" + HIDDEN
    return out


def hidden_parts(url, extra=()) -> tuple[tuple[str, str], ...]:
    """(text, replacement) pairs that :func:`scrub` applies: the URL itself in the renderings an HTTP
    library shows (replaced by :func:`redact_url`), then its secret parts alone, raw and percent-decoded
    (user, password, the query and each of its values, the fragment), and ``extra`` strings such as
    header values (replaced by ``***``). Longest first, so a whole value goes before a piece of it."""
    if not isinstance(url, str):
        url = str(url)
    shown = redact_url(url)
    whole = {url, url.rstrip("/")}
    try:
        from yarl import URL

        y = URL(url)
        whole |= {str(y), str(y.with_user(None)), str(y.with_query(None)), str(y.with_user(None).with_query(None)),
                  y.human_repr()}
    except (ValueError, TypeError):
        pass
    parts: set[str] = set()
    try:
        u = urlsplit(url)
    except ValueError:
        u = None
    if u is not None:
        userinfo = u.netloc.rpartition("@")[0]
        if userinfo:
            parts.add(userinfo)
            parts.update(userinfo.split(":", 1))
        if u.query:
            parts.add(u.query)
            for piece in u.query.split("&"):
                parts.update((piece, piece.partition("=")[2]))
            for _k, v in parse_qsl(u.query, keep_blank_values=True):
                parts.add(v)
        if u.fragment:
            parts.add(u.fragment)
    parts.update(x for x in extra if isinstance(x, str))
    parts |= {unquote(p) for p in parts} | {quote(p, safe="") for p in parts}
    pairs = {w: shown for w in whole if w and w != shown}
    pairs.update({p: HIDDEN for p in parts if len(p) >= MIN_SECRET and p not in pairs})
    return tuple(sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True))


def scrub(text, pairs) -> str | None:
    """``text`` (str, bytes or an exception) with each (needle, replacement) of ``pairs`` applied."""
    if text is None:
        return None
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    text = str(text)
    for needle, replacement in pairs:
        if needle in text:
            text = text.replace(needle, replacement)
    return text
