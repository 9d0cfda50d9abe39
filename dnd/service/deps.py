"""Per-app state and the dependencies routes declare (`Depends`): the state, a ready batcher, the admin key."""

from __future__ import annotations

import asyncio
import hmac
from concurrent.futures import ThreadPoolExecutor

from fastapi import Depends, Request

from .batcher import MicroBatcher
from .errors import ApiError
from .metrics import Metrics
from .settings import Settings


class State:
    """What one app holds: settings, metrics, the batcher (once the bundle is loaded) and the decode threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.reload_lock = asyncio.Lock()
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")


def get_state(request: Request) -> State:
    return request.app.state.dnd


def ready_batcher(st: State = Depends(get_state)) -> MicroBatcher:
    """The batcher, or 503 while the bundle is loading (or failed to load, with the reason)."""
    if st.batcher is None:
        raise ApiError(503, "not_ready", f"model not loaded yet{': ' + st.load_error if st.load_error else ''}")
    return st.batcher


def require_api_key(request: Request, st: State = Depends(get_state)) -> None:
    """404 when no key is configured (the route is off), 401 unless X-API-Key matches it."""
    key = st.settings.api_key
    if not key:
        raise ApiError(404, "disabled", "reload is disabled: set DND_API_KEY to enable it")
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "unauthorized", "expected a valid X-API-Key header")
