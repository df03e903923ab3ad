"""The OpenAPI 3.1 document of every route (``calsync/web/openapi.json``), served at
``/openapi.json``, and the middleware that validates request bodies against it.

The document is the one place a route is described: a route mounted without an entry
(or an entry without a route) fails ``tests/web/test_openapi.py``, which walks the
routes the real app mounts. To add a route, add its path and method under ``paths``.

:func:`validation_middleware` checks every JSON request body of a non-public route
against the operation's schema before the handler runs: a malformed body gets a 400
``{"error": ..., "field": ...}`` naming what is wrong and where. Webhook bodies are
not checked here: their handlers check them (they answer providers, not people).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Mapping
from importlib import resources as package_files
from typing import Any

import jsonschema
import jsonschema_rs
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from jsonschema.exceptions import ValidationError, best_match

from calsync.web.auth import is_public_path

_PLACEHOLDER = re.compile(r"\{[^}]+\}")
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@functools.cache
def document_text() -> str:
    """The document as shipped in the package."""
    return package_files.files("calsync.web").joinpath("openapi.json").read_text("utf-8")


def document() -> dict[str, Any]:
    """The document, parsed (a fresh copy each call)."""
    parsed: dict[str, Any] = json.loads(document_text())
    return parsed


def operations(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every operation the document describes."""
    return {
        (method.upper(), path)
        for path, item in doc.get("paths", {}).items()
        for method in item
        if method in _METHODS
    }


def shape(path: str) -> str:
    """A path with its placeholders' names dropped: ``/a/{id}`` and ``/a/{rid}`` match."""
    return _PLACEHOLDER.sub("{}", path)


class BodySchemas:
    """The JSON request-body schema of each operation, resolved against the document."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        registry_doc = dict(doc)
        self._validators: dict[tuple[str, str], tuple[bool, jsonschema.Draft202012Validator]] = {}
        # jsonschema (pure Python) takes milliseconds for a query of ten resources; the
        # Rust validator accepts a valid body in microseconds. Only a body it refuses
        # goes to jsonschema, whose best_match names what is wrong (and decides).
        self._fast: dict[tuple[str, str], Any] = {}
        for path, item in doc.get("paths", {}).items():
            for method, operation in item.items():
                if method not in _METHODS:
                    continue
                body = operation.get("requestBody") or {}
                schema = (body.get("content") or {}).get("application/json", {}).get("schema")
                if schema is None:
                    continue
                wrapped = {**schema, "components": registry_doc.get("components", {})}
                validator = jsonschema.Draft202012Validator(wrapped)
                key = (method.upper(), shape(path))
                self._validators[key] = (bool(body.get("required")), validator)
                self._fast[key] = jsonschema_rs.Draft202012Validator(wrapped)

    def wants(self, method: str, path: str) -> bool:
        """Whether the operation has a JSON body schema."""
        return (method, shape(path)) in self._validators

    def check(self, method: str, path: str, body: bytes) -> Any:
        """Raise :class:`web.HTTPBadRequest` (JSON) when ``body`` does not fit the schema
        of the operation ``(method, path)`` (a route's canonical path); no schema: pass.
        Returns the parsed body, or :data:`NOT_PARSED` when there was none to check."""
        found = self._validators.get((method, shape(path)))
        if found is None:
            return NOT_PARSED
        required, validator = found
        if not body.strip():
            if required:
                raise _bad("the body must be a JSON object", None)
            return NOT_PARSED
        try:
            value = json.loads(body)
        except RecursionError:
            raise _bad("the body is JSON nested too deeply", None) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"the body is not JSON: {exc}", None) from None
        if self._fast[(method, shape(path))].is_valid(value):
            return value
        error = best_match(validator.iter_errors(value))
        if error is not None:
            raise _bad(_describe(error), _field(error))
        return value


#: The request key under which :func:`validation_middleware` leaves the body it parsed.
PARSED_BODY: web.RequestKey[Any] = web.RequestKey("calsync.parsed_body", object)
#: :meth:`BodySchemas.check` found no body to parse.
NOT_PARSED: Any = object()


def _field(error: ValidationError) -> str | None:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) or None


def _describe(error: ValidationError) -> str:
    where = _field(error)
    message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
    return f"{where}: {message}" if where else f"the body: {message}"


def _bad(message: str, field: str | None) -> web.HTTPBadRequest:
    body: dict[str, str] = {"error": message}
    if field:
        body["field"] = field
    return web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


def validation_middleware(schemas: BodySchemas, *, read_timeout: float) -> Middleware:
    """Validate JSON bodies of non-public routes against the document (400 if malformed).

    The body is read here within ``read_timeout`` (408 otherwise) and under the
    application's ``client_max_size`` (413); aiohttp caches it for the handler.
    """

    @web.middleware
    async def validate_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.match_info
        resource = match.route.resource if match.http_exception is None else None
        if (
            resource is None
            or is_public_path(resource.canonical)
            or not schemas.wants(request.method, resource.canonical)
        ):
            return await handler(request)
        try:
            async with asyncio.timeout(read_timeout):
                body = await request.read()
        except TimeoutError:
            return web.json_response(
                {"error": f"the body did not arrive within {read_timeout:g}s"}, status=408
            )
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "the body is too large"}, status=413)
        try:
            parsed = schemas.check(request.method, resource.canonical, body)
        except web.HTTPBadRequest as exc:
            return web.Response(status=400, body=exc.text, content_type="application/json")
        if parsed is not NOT_PARSED:
            request[PARSED_BODY] = parsed  # the handler's json_body need not parse it again
        return await handler(request)

    return validate_body


async def serve_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.Response(text=document_text(), content_type="application/json")


def body_validation(read_timeout: float) -> Middleware:
    """:func:`validation_middleware` over the shipped document."""
    return validation_middleware(BodySchemas(document()), read_timeout=read_timeout)
