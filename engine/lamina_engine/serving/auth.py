"""BearerKey: the `Authorization: Bearer <key>` check of a Lamina server's ports.

The public port checks `api_key` on every path but /health (the kubelet's probes) and /metrics
(Prometheus); the internal port checks `internal_key` on every path. Keys
are compared with hmac.compare_digest (constant time). A missing or wrong key is a 401 in
OpenAI's error shape. No key configured: the port is open.
"""

from __future__ import annotations

import hmac
import json

from pydantic import SecretStr


class BearerKey:
    """Pure ASGI middleware: 401 unless the request carries `key` (paths but `open_paths`)."""

    def __init__(
        self, app, key: SecretStr | None, setting: str, open_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app, self.setting, self.open_paths = app, setting, open_paths
        self.expected = None if key is None else f"Bearer {key.get_secret_value()}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if self.expected is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        await self._reject(send, "missing" if not given else "wrong")

    async def _reject(self, send, how: str) -> None:
        message = (f"{how} API key: send `Authorization: Bearer <key>` with the key this server "
                   f"was given ({self.setting})")  # fmt: skip
        error = {"message": message, "type": "authentication_error", "param": None,
                 "code": "invalid_api_key"}  # fmt: skip
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
