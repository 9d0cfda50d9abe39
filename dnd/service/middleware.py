"""The outermost layer of every request (pure ASGI; BaseHTTPMiddleware costs ~1 ms a request):

- a request id: the client's `X-Request-ID` when it is a short token, else a new one; echoed in a response header
  and in every error body;
- metrics: requests by route template and status, latency;
- unexpected errors: logged once with the request id, answered with a 500 that names the id and nothing of the
  internals, and not re-raised, so the server keeps the keep-alive connection usable;
- a client that goes away mid-body is counted as status 499 (nginx's "client closed request"), not as an error.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect

from .metrics import Metrics

log = logging.getLogger("dnd.service")
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _TOKEN.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        t0, status, started = time.perf_counter(), [500], [False]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            status[0] = 499
            log.info(
                "client went away before sending the whole body (%s %s, request id %s)",
                scope["method"],
                scope["path"],
                rid,
            )
        except Exception:
            log.exception("unhandled error on %s %s (request id %s)", scope["method"], scope["path"], rid)
            status[0] = 500
            if not started[0]:
                await _internal_error(send_wrapper, scope["path"], rid)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


async def _internal_error(send: Any, path: str, rid: str) -> None:
    message = f"internal error; quote request id {rid} when reporting it"
    err: Any = (
        message
        if path.startswith("/v2/")
        else {"status": 500, "code": "internal_error", "message": message, "request_id": rid}
    )
    body = json.dumps({"error": err}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
