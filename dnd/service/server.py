"""Running the app under uvicorn (`dnd serve`), with a request-head timeout uvicorn lacks.

uvicorn arms a keep-alive timer only after a response, and any byte received cancels it, so a client that opens a
connection and sends its headers one byte at a time (slowloris) holds the connection for ever. `GuardedHttpTools`
closes a connection whose request head is not complete within DND_HEADER_TIMEOUT_S of its first byte (or of the
connection); body time is bounded in the app (DND_BODY_TIMEOUT_S, 408).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings


class GuardedHttpTools(HttpToolsProtocol):
    # seconds; from DND_HEADER_TIMEOUT_S (read when the first connection arrives, in every worker process), or set
    head_timeout: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if getattr(self, "_head_timer", None) is None:
            if GuardedHttpTools.head_timeout is None:
                GuardedHttpTools.head_timeout = Settings().header_timeout_s
            self._head_timer = self.loop.call_later(GuardedHttpTools.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a new request on a kept-alive connection: its head must arrive in time too

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def run(host: str, port: int, log_level: str, overrides: dict[str, Any]) -> None:
    """Serve on host:port. Settings come from DND_* variables and `overrides` (the CLI's flags), exported so that
    every worker process (DND_WORKERS) reads the same."""
    import uvicorn

    for k, v in overrides.items():
        os.environ[f"DND_{k.upper()}"] = str(v)
    s = Settings()  # validated here: a bad value stops the service before uvicorn starts
    uvicorn.run(
        "dnd.service.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        workers=s.workers,
        http=GuardedHttpTools,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
