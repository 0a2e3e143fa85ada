"""The Flask application factory: the one place the HTTP API is wired."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg
import structlog
from eventsourcing.persistence import PersistenceError
from flask import Flask, Response, g, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from api.problems import PROBLEM_JSON, from_http_exception, problem, refusal_errors
from api.routes import admin, audit, members, operations, postings, redemptions, reports
from api.schemas import ProblemSchema
from application.errors import ApplicationError
from application.json_input import UNSTORABLE, no_duplicate_keys, unstorable_strings
from application.ledger import Ledger
from domain.errors import DomainError
from infrastructure.config import Config
from infrastructure.group_commit import CommitQueue
from infrastructure.key_reads import KeyReads
from projections.read_model import ReadModel

MAX_BODY_BYTES = 2 * 1024 * 1024  # a full batch of 1000 purchases fits well inside
# An over-long body up to this size is read and thrown away before the 413 is sent: a client still
# sending when the server closed would get a broken pipe (or a reset) instead of the answer.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
log = structlog.get_logger("loyalty.http")


class LedgerApi(Api):
    """flask-smorest, with errors documented and sent as problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        saved = self.DEFAULT_RESPONSE_CONTENT_TYPE
        self.DEFAULT_RESPONSE_CONTENT_TYPE = PROBLEM_JSON
        try:
            super()._register_responses()
        finally:
            self.DEFAULT_RESPONSE_CONTENT_TYPE = saved

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        if error.code and error.code >= 500:
            original = getattr(error, "original_exception", None)
            log.error("unhandled error", exc_info=original or error)
            return problem("server-error", detail="the error was logged with this request's id")
        return from_http_exception(error)


def create_app(config: Config, ledger: Ledger | None = None, read_model: ReadModel | None = None,
               committer: CommitQueue | None = None, key_reads: KeyReads | None = None) -> Flask:
    """Builds the app on `ledger` and `read_model`, or on new ones for `config` (schema and
    projection tables already created by the caller)."""
    if ledger is None:
        from infrastructure.bootstrap import build_ledger, build_read_model

        ledger = build_ledger(config, create_schema=False)
        read_model = build_read_model(config, ledger, create_tables=False)
    app = Flask("loyalty")
    app.config.update(
        LOYALTY=config,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE="loyalty-ledger",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
    )
    app.logger.disabled = True  # errors are logged once, as structlog JSON, by the handlers below
    app.extensions["ledger"] = ledger
    app.extensions["read_model"] = read_model
    app.extensions["committer"] = committer
    app.extensions["key_reads"] = key_reads
    api = LedgerApi(app, spec_kwargs={
        "security": [{"bearerAuth": []}],
        "info": {"description": "The loyalty points ledger's HTTP API. Errors are application/problem+json."},
    })
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    for blueprint in (admin.blp, members.blp, postings.blp, redemptions.blp, operations.jobs, audit.audit, reports.blp,
                      operations.health, audit.ready):
        api.register_blueprint(blueprint)

    @app.errorhandler(DomainError)
    @app.errorhandler(ApplicationError)
    def ledger_error(error: DomainError | ApplicationError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if error.slug == "unauthenticated" else None
        return problem(error.slug, detail=error.detail, errors=refusal_errors(error), headers=headers)

    @app.errorhandler(PersistenceError)
    @app.errorhandler(psycopg.OperationalError)  # a database restart under a read-model query
    @app.errorhandler(psycopg.InterfaceError)
    def database_error(error: Exception) -> Response:
        log.error("database error", exc_info=error)
        return problem("unavailable", detail="the database did not answer; the request may be retried with the same id")

    @app.before_request
    def start_request() -> Response | None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        g.started = time.perf_counter()
        if UNSTORABLE.search(request.path):  # no resource is named so
            return problem("not-found", detail="the path holds a NUL or an unpaired surrogate character")
        bad_args = sorted(k for k, v in request.args.items(multi=True) if UNSTORABLE.search(k + v))
        if bad_args:
            return problem("validation-error", detail="a query parameter holds a NUL or an unpaired surrogate",
                           errors={k: ["must not hold a NUL or an unpaired surrogate character"] for k in bad_args})
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _too_large(request.content_length)
        if request.method in ("POST", "PUT", "PATCH") and request.content_length:
            if request.mimetype == "text/csv" and request.path == "/v1/reconciliations/partner-statements":
                return None
            if request.mimetype != "application/json":
                return problem("unsupported-media-type", detail=f"got {request.mimetype or 'no content type'}")
            try:
                # Parsed once here so that hostile JSON (nesting deep enough to exhaust the stack,
                # integers of thousands of digits) is a 400, not an error deep in a parser.
                document = json.loads(request.get_data(cache=True), object_pairs_hook=no_duplicate_keys)
            except (ValueError, RecursionError) as error:
                return problem("malformed-request", detail=f"the body is not acceptable JSON: {str(error)[:120]}")
            unstorable = unstorable_strings(document)
            if unstorable:
                return problem("validation-error", detail="text holds a NUL or an unpaired surrogate character",
                               errors={f: ["must not hold a NUL or an unpaired surrogate character"] for f in unstorable})
        return None

    @app.after_request
    def log_request(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        principal = g.get("principal")
        log.info(
            "request",
            request_id=g.get("request_id"),
            method=request.method,
            route=request.url_rule.rule if request.url_rule else None,
            status=response.status_code,
            latency_ms=round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            key_id=principal.key_id if principal else None,
        )
        return response

    return app


def _too_large(length: int) -> Response:
    """413 for a declared length over the limit, after reading the body (up to a bound) so the
    client has sent it all and reads the answer; then the connection is closed."""
    if length <= DRAIN_LIMIT_BYTES:
        stream = request.environ.get("wsgi.input")
        left = length
        while stream is not None and left > 0:
            chunk = stream.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
    response = problem("payload-too-large", detail=f"the body is {length:,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
    response.headers["Connection"] = "close"
    return response


def openapi_document(app: Flask) -> dict[str, Any]:
    return app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()
