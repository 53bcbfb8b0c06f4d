"""Access control: optional API keys (bearer tokens) and CORS.

With RNNLAB_API_KEYS / RNNLAB_API_KEY unset the API is open. With keys, every request needs
`Authorization: Bearer <key>` except the OPEN paths: the health checks, the docs (Swagger UI,
its assets and /openapi.json) and the dashboard's page shell (`/`, `/static/…`: files without
any data, like the docs; everything the page shows comes from the API with the key).

Browsers cannot put a header on an EventSource or an <img>, so a safe request (GET, HEAD) may
carry the key in the `rnnlab_key` cookie instead, which the dashboard sets (SameSite=Strict).
Requests that change something (POST, DELETE) need the header: a cookie alone never
authorises them, so no other site can make a browser start or delete runs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from urllib.parse import unquote

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service import problems

log = logging.getLogger("rnnlab.api")
COOKIE = "rnnlab_key"
SCHEME = "bearerAuth"
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/"}
)
OPEN_PREFIXES = ("/docs-assets/", "/static/")
SAFE_METHODS = frozenset({"GET", "HEAD"})


def is_open(path: str) -> bool:
    """Whether `path` is served without a key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _digest(key: str | bytes) -> bytes:
    # Comparing fixed-length digests keeps the time independent of where, and whether, the
    # lengths differ.
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class KeyChecker:
    """Constant-time membership of a presented key in the configured ones."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: bytes) -> bool:
        d = _digest(presented)
        ok = False
        for known in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(d, known)
        return ok


def _bearer(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """(token from Authorization: Bearer, token from the rnnlab_key cookie)."""
    token = cookie = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            # Present but not a bearer token: a wrong key.
            token = rest.strip() if scheme.lower() == b"bearer" else b""
        elif name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, sep, v = part.strip().partition("=")
                if sep and k == COOKIE and v:
                    cookie = unquote(v.strip('"')).encode()  # the page sets encodeURIComponent(key)
    return token, cookie


class APIKeyMiddleware:
    """401 (problem+json, WWW-Authenticate: Bearer) for requests without a valid key."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.checker = KeyChecker(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.checker or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token, cookie = _bearer(scope.get("headers", []))
        if token is not None:
            ok = self.checker.accepts(token)
        elif cookie is not None and scope["method"] in SAFE_METHODS:
            ok = self.checker.accepts(cookie)
        else:
            await self._reject(scope, receive, send, missing=True)
            return
        if not ok:
            await self._reject(scope, receive, send, missing=False)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, *, missing: bool) -> None:
        if missing:
            detail = "this server needs an API key: send Authorization: Bearer <key>"
            challenge = 'Bearer realm="rnnlab"'
        else:
            detail = "the API key is not valid"
            challenge = 'Bearer realm="rnnlab", error="invalid_token"'
        problem = problems.ProblemError(401, detail, headers={"WWW-Authenticate": challenge})
        await problems.render(Request(scope, receive), problem)(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_open(host: str, keys: Sequence[str]) -> bool:
    """Log a warning when an open API (no keys) listens beyond loopback; True if it did."""
    if keys or is_loopback(host):
        return False
    log.warning(
        "rnnlab listens on %s without API keys: anyone who reaches this port can start, "
        "cancel and delete runs. Set RNNLAB_API_KEYS to require a key.",
        host,
    )
    return True
