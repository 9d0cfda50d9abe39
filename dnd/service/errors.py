"""Errors as the service answers them: `ApiError` (status, stable code, message), the library's `ImageError` mapped
to a status, and the handlers that turn every 4xx into the documented JSON shape.

Shape outside /v2: {"error": {"status": 415, "code": "not_an_image", "message": "...", "request_id": "..."}}.
/v2 routes answer as the Open Inference Protocol says: {"error": "message"}.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from detector.images import ImageError


class ApiError(Exception):
    """A request the service refuses: HTTP `status`, a stable machine-readable `code`, and a message saying what was
    expected and what was found."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


IMAGE_STATUS = {
    "empty_body": 400,
    "not_an_image": 415,
    "corrupt_image": 400,
    "image_too_large": 413,
    "invalid_base64": 400,
    "invalid_json": 422,
}


def from_image_error(e: ImageError) -> ApiError:
    return ApiError(IMAGE_STATUS.get(e.code, 400), e.code, e.message)


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class OipErrorBody(BaseModel):
    error: str


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def error_response(
    status: int, code: str, message: str, path: str, rid: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if path == "/v2" or path.startswith("/v2/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    body = {"error": {"status": status, "code": code, "message": message, "request_id": rid}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, request.url.path, request_id(request))

    @app.exception_handler(ImageError)
    async def image_error(request: Request, e: ImageError) -> JSONResponse:
        a = from_image_error(e)
        return error_response(a.status, a.code, a.message, request.url.path, request_id(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3]]
        return error_response(422, "invalid_request", "; ".join(parts), request.url.path, request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), request.url.path, request_id(request), e.headers)


def responses(*statuses: int, oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer."""
    words = {
        400: "bad request (corrupt image, bad base64, malformed OIP request)",
        401: "missing or wrong X-API-Key",
        404: "not found (unknown model, or route disabled)",
        408: "the body did not arrive in time",
        409: "reload failed; the current model is kept",
        413: "body, image or batch too large",
        415: "not an accepted image type",
        422: "malformed JSON or request",
        500: "unexpected error (request id)",
        503: "model not loaded yet",
    }
    model = OipErrorBody if oip else ErrorBody
    return {s: {"model": model, "description": words[s]} for s in statuses}
