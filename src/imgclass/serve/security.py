"""ASGI middleware: a request body size limit (counted as it streams, whatever Content-Length claims) and an access
token (``Authorization: Bearer``, ``X-Imgclass-Token``, a cookie set by a first ``?token=`` visit)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

__all__ = ["BodyLimit", "TokenGate", "is_loopback", "TOKEN_COOKIE", "TOKEN_HEADER"]

TOKEN_COOKIE = "imgclass_token"
TOKEN_HEADER = "x-imgclass-token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    h = host.strip("[]")
    if h in {"localhost", ""}:
        return h == "localhost"
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(h, None))
        except (OSError, ValueError):
            return False


async def _send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413: by Content-Length before reading, and while streaming
    (a chunked upload, or a Content-Length that lies). Whatever the app answers after the limit was hit is replaced
    by the 413."""

    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes} bytes ({self.max_bytes / 2**20:.1f} MiB)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await _send_json(send, 400, "invalid Content-Length header")
                if n > self.max_bytes:
                    return await _send_json(send, 413, self._message())
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise _TooLarge()
            return msg

        async def guarded_send(msg):
            if state["over"]:
                if msg["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _send_json(send, 413, self._message())
                return
            if msg["type"] == "http.response.start":
                state["started"] = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if state["over"] and not state["started"]:
            await _send_json(send, 413, self._message())


class TokenGate:
    """Every HTTP request must carry ``token``: ``Authorization: Bearer TOKEN``, ``X-Imgclass-Token: TOKEN``, the
    ``imgclass_token`` cookie, or ``?token=TOKEN`` (which answers with a redirect that sets the cookie, for a browser's
    first visit). Others get 401."""

    def __init__(self, app, *, token: str):
        self.app = app
        self.token = token.encode()

    def _ok(self, value: str | bytes | None) -> bool:
        if value is None:
            return False
        v = value.encode() if isinstance(value, str) else value
        return hmac.compare_digest(v, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in {"http", "websocket"}:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and self._ok(auth[7:].strip()):
            return await self.app(scope, receive, send)
        if self._ok(headers.get(TOKEN_HEADER.encode())):
            return await self.app(scope, receive, send)
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            pass
        if TOKEN_COOKIE in cookie and self._ok(cookie[TOKEN_COOKIE].value):
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["type"] == "http" and self._ok((query.get("token") or [None])[0]):
            rest = "&".join(f"{k}={v}" for k, vs in query.items() if k != "token" for v in vs)
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1")),
                                    (b"set-cookie", f"{TOKEN_COOKIE}={self.token.decode()}; HttpOnly; "
                                                    "SameSite=Strict; Path=/".encode()),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_json(send, 401, "this server needs its access token: send 'Authorization: Bearer TOKEN' (or "
                                    "X-Imgclass-Token: TOKEN), or open any page once with ?token=TOKEN",
                         headers=[(b"www-authenticate", b"Bearer")])
