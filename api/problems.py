"""Errors as RFC 9457 problem+json: one table from error slug to HTTP status and title."""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from werkzeug.exceptions import HTTPException

PROBLEM_JSON = "application/problem+json"

# slug -> (status, title). Domain and application errors carry their slug.
PROBLEMS: dict[str, tuple[int, str]] = {
    "validation-error": (422, "The request is not valid"),
    "malformed-request": (400, "The request body is not valid JSON"),
    "unauthenticated": (401, "A valid API key is required"),
    "forbidden": (403, "This key may not do that"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "not-acceptable": (406, "Not acceptable"),
    "idempotency-conflict": (409, "This id was already used with a different request"),
    "conflict": (409, "The request conflicts with the ledger's state"),
    "already-reversed": (409, "Already cancelled or reversed"),
    "payload-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "The request body must be application/json"),
    "insufficient-points": (422, "Not enough available points"),
    "unknown-store": (422, "The store does not belong to this partner"),
    "return-exceeds-purchase": (422, "The return exceeds what is left of the purchase"),
    "contention": (503, "Too many concurrent writes on this member; retry"),
    "unavailable": (503, "The database is not answering"),
    "server-error": (500, "Internal error"),
}

# Werkzeug's HTTP errors by status, for errors raised by routing and the request layer.
_HTTP_SLUGS = {
    400: "malformed-request", 401: "unauthenticated", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 406: "not-acceptable", 409: "conflict", 413: "payload-too-large",
    414: "uri-too-long", 415: "unsupported-media-type", 422: "validation-error",
    431: "headers-too-large",
}


def problem_bytes(status: int, title: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem response, for errors answered before Flask sees the request."""
    slug = _HTTP_SLUGS.get(status, "server-error" if status >= 500 else "malformed-request")
    body = json.dumps({"type": slug, "title": title, "status": status, "detail": detail[:500]}).encode()
    head = (f"HTTP/1.1 {status} {title}\r\nConnection: close\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def problem(slug: str, detail: str | None = None, errors: dict[str, Any] | None = None,
            status: int | None = None, headers: dict[str, str] | None = None) -> Response:
    default_status, title = PROBLEMS.get(slug, (status or 500, slug))
    body: dict[str, Any] = {"type": slug, "title": title, "status": status or default_status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=body["status"], mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def from_http_exception(error: HTTPException) -> Response:
    """Routing, body-size and webargs validation errors, as problems."""
    status = error.code or 500
    slug = _HTTP_SLUGS.get(status, "server-error" if status >= 500 else "malformed-request")
    data = getattr(error, "data", None) or {}
    errors = flatten_messages(data.get("messages")) if "messages" in data else None
    detail = data.get("message") or error.description
    if errors:
        detail = "; ".join(f"{field}: {' '.join(map(str, msgs))}" for field, msgs in errors.items())
    headers = dict(data.get("headers") or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem(slug, detail=detail, errors=errors, status=status, headers=headers)


def refusal_errors(error: Any) -> dict[str, Any] | None:
    """A refusal's `errors` member: its own, or its one field with the detail."""
    errors = error.facts.get("errors")
    field = error.facts.get("field")
    if not errors and field:
        errors = {str(field): [error.detail]}
    return errors or None


def flatten_messages(messages: Any) -> dict[str, list[str]]:
    """webargs nests messages by location and field path; clients want 'field.sub': [...]."""
    flat: dict[str, list[str]] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            flat.setdefault(path or "body", []).extend(value)
        elif isinstance(value, list):
            for index, sub in enumerate(value):
                walk(sub, f"{path}.{index}")
        else:
            flat.setdefault(path or "body", []).append(str(value))

    if isinstance(messages, dict):
        for location, fields in messages.items():
            if location in ("json", "query", "view_args", "form"):
                walk(fields, "")
            else:
                walk(fields, str(location))
    else:
        walk(messages, "")
    return flat
