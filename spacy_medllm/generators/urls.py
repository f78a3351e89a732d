"""URL checks for the OpenAI-compatible backend: what may be shown of a URL, and whether it points
to this machine."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

_LOCAL_HOSTS = ("localhost", "localhost.localdomain", "ip6-localhost")


def redact_url(url: str | None) -> str | None:
    """`url` without user name, password, query or fragment, which may hold credentials."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:
        return "<unparsable URL>"
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_local_url(url: str) -> bool:
    """Whether `url` points to this machine (localhost, 127.0.0.0/8, ::1, 0.0.0.0)."""
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
        return address.is_loopback or address.is_unspecified
    except ValueError:
        return False
