"""POST /admin/reload: load the bundle again (after `dnd profiles` or a retrained model) and swap it in between
batches; no request is dropped."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from fastapi import APIRouter, Depends

from ..batcher import MicroBatcher
from ..deps import State, get_state, ready_batcher, require_api_key
from ..errors import ApiError, responses
from ..loading import load
from .predict import model_ref

router = APIRouter(tags=["admin"])


@router.post(
    "/admin/reload",
    summary="reload bundle and profiles (header X-API-Key)",
    responses=responses(401, 404, 409, 503),
    dependencies=[Depends(require_api_key)],
)
async def reload(st: State = Depends(get_state), batcher: MicroBatcher = Depends(ready_batcher)) -> dict[str, Any]:
    async with st.reload_lock:
        try:
            det = await asyncio.to_thread(load, st.settings)  # not the inference thread: serving goes on
        except Exception as e:
            raise ApiError(409, "reload_failed", f"kept the current model; could not load the new one: {e}") from None
        old = model_ref(batcher.detector)
        batcher.swap(det)
        await asyncio.to_thread(gc.collect)  # the old detector's reference cycles (traced graph) go now, not later
    return {"status": "reloaded", "model": model_ref(det), "previous": old}
