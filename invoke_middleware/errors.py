"""The one exception tree of the gateway, and the one place errors are rendered.

Every error the gateway itself produces is an instance of :class:`GatewayError`. Each subclass
knows its HTTP status and its machine-readable ``code`` (docs/contract.md §8); the message is
written for the caller and never contains upstream error text or a stack trace.

Rendering happens in :func:`render_error` only, so the body shape, the marker header and the
``X-Request-ID`` header are the same for every error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol

#: Marks a response as produced by the gateway itself, so a container's own 502 is never
#: mistaken for the gateway's. Its value is the error ``code``.
ERROR_MARKER_HEADER = "X-Invoke-Error"

REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True, kw_only=True)
class ErrorDetail:
    """One problem found in a request, located by its JSON pointer (RFC 6901)."""

    pointer: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


class GatewayError(Exception):
    """Base of every error the gateway renders itself.

    Subclasses set ``status`` and ``code``; instances carry a caller-safe message and
    optionally a list of :class:`ErrorDetail` and extra response headers.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "The gateway failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Sequence[ErrorDetail] = (),
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.message = message or self.default_message
        self.details = tuple(details)
        self.headers = tuple(headers)
        super().__init__(self.message)


def as_gateway_error(error: BaseException) -> GatewayError:
    """``error`` itself when it is the gateway's, else the generic 500 that stands for a bug."""
    return error if isinstance(error, GatewayError) else GatewayError()


class InvalidRequestError(GatewayError):
    status = 400
    code = "invalid_request"
    default_message = "The request is invalid."


class InvalidPathError(GatewayError):
    status = 400
    code = "invalid_path"
    default_message = "The path is not allowed."


class MissingTeamError(GatewayError):
    status = 400
    code = "missing_team"
    default_message = "The X-Team-ID header is required with a user token."


class InvalidTeamError(GatewayError):
    status = 400
    code = "invalid_request"
    default_message = "The X-Team-ID header must be a UUID."


class UnauthenticatedError(GatewayError):
    status = 401
    code = "unauthenticated"
    # One message for every reason, so a caller cannot tell which check failed
    # (docs/contract.md §7).
    default_message = "Missing or invalid credentials."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers=(("WWW-Authenticate", "Bearer"),))


class ForbiddenError(GatewayError):
    status = 403
    code = "forbidden"
    default_message = "You are not allowed to do this."


class ServiceNotFoundError(GatewayError):
    status = 404
    code = "service_not_found"
    default_message = "Service not found."


class MethodNotAllowedError(GatewayError):
    status = 405
    code = "method_not_allowed"
    default_message = "Method not allowed."

    def __init__(self, allowed: Sequence[str], message: str | None = None) -> None:
        super().__init__(message, headers=(("Allow", ", ".join(allowed)),))


class ServiceNotRunningError(GatewayError):
    status = 409
    code = "service_not_running"
    default_message = "The service is not running."


class LengthRequiredError(GatewayError):
    status = 411
    code = "length_required"
    default_message = "A request body needs Content-Length or chunked framing."


class PayloadTooLargeError(GatewayError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class HeadersTooLargeError(GatewayError):
    status = 431
    code = "request_header_fields_too_large"
    default_message = "The request headers are too large."


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    code = "unsupported_media_type"
    default_message = "The request body must be application/json."


class RateLimitedError(GatewayError):
    """A rate limit (requests per window) is used up; ``Retry-After`` says when it resets."""

    status = 429
    code = "rate_limited"
    default_message = "Too many requests; retry after the time in Retry-After."


class TooManyInFlightError(GatewayError):
    """A concurrency limit is reached: the caller's team or the service has enough relays in
    flight. Nothing was sent upstream."""

    status = 429
    code = "too_many_in_flight"
    default_message = "Too many requests in flight; retry after the time in Retry-After."


class AuthUnavailableError(GatewayError):
    """User tokens cannot be verified now: the identity provider's key set could not be had
    (unreachable, or still being fetched with too many requests waiting). Not the token's
    fault, so not a 401 that would make a client drop a good token."""

    status = 503
    code = "auth_unavailable"
    default_message = "The gateway cannot verify user tokens right now; retry later."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers=(("Retry-After", "1"),))


class LimitsUnavailableError(GatewayError):
    """The shared rate-limit store cannot be reached and the gateway is set to fail closed."""

    status = 503
    code = "limits_unavailable"
    default_message = "The gateway cannot check its rate limits right now; retry later."


class StoreUnavailableError(GatewayError):
    """The store of services, credentials or memberships cannot answer now (its server is
    down or overloaded, a lock or the connection pool made the read wait too long). Not the
    caller's fault and not a bug: a client should retry, which a 500 would not tell it.

    Raised by a store's reads (the SQL store raises it); any other failure of a store
    remains the 500 of an unexpected error."""

    status = 503
    code = "store_unavailable"
    default_message = "The gateway cannot reach its store right now; retry later."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers=(("Retry-After", "1"),))


class UpgradeNotSupportedError(GatewayError):
    status = 501
    code = "upgrade_not_supported"
    default_message = "Connection upgrades (WebSocket) are not supported."


class UpstreamError(GatewayError):
    """The upstream answered with something that is not a valid HTTP response."""

    status = 502
    code = "upstream_error"
    default_message = "The service returned an invalid response."


class UpstreamUnreachableError(UpstreamError):
    code = "upstream_unreachable"
    default_message = "The service could not be reached."


class ResponseTooLargeError(UpstreamError):
    code = "response_too_large"
    default_message = "The service's response is larger than the gateway buffers."


class RequestTimeoutError(GatewayError):
    """The caller's body did not arrive within the exchange's total deadline: the caller's
    slowness, never blamed on the service."""

    status = 408
    code = "request_timeout"
    default_message = "The request body did not arrive in time."


class UpstreamTimeoutError(GatewayError):
    status = 504
    code = "upstream_timeout"
    default_message = "The service did not answer in time."


class LoopDetectedError(GatewayError):
    status = 508
    code = "loop_detected"
    default_message = "The request has already passed through this gateway."


class NotAcceptableError(GatewayError):
    """The caller accepts neither ``application/json`` nor ``text/event-stream``."""

    status = 406
    code = "not_acceptable"
    default_message = "Accept application/json or text/event-stream."


class ForbiddenOriginError(ForbiddenError):
    """A browser page from an origin not on the allow-list (DNS-rebinding defence)."""

    status = 403
    code = "forbidden"
    default_message = "This origin may not call the MCP endpoint."


@dataclass(frozen=True, kw_only=True)
class RenderedError:
    """An error turned into an HTTP response: status line, headers and body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)


class ErrorRenderer(Protocol):
    """Turns a :class:`GatewayError` into a response. Plug in your own to change the body."""

    def __call__(self, error: GatewayError, *, request_id: str) -> RenderedError: ...


#: The reason phrase of every registered status code, as RFC 9110 §15 (and the RFCs the IANA
#: registry cites for the rest) spells it. :class:`http.HTTPStatus` still has the RFC 7231
#: names of four of them before Python 3.13; RFC 9110 renamed those.
REASON_PHRASES: Final[Mapping[int, str]] = MappingProxyType(
    {status.value: status.phrase for status in HTTPStatus}
    | {
        413: "Content Too Large",
        414: "URI Too Long",
        416: "Range Not Satisfiable",
        422: "Unprocessable Content",
    }
)


def reason_phrase(status: int) -> str:
    """The reason phrase for ``status``, for status lines and problem titles alike.

    An unregistered code gets the phrase of its class's ``x00`` code, as RFC 9110 §15 tells a
    client to read it (``599`` is an ``Internal Server Error``); ``"Unknown"`` outside
    100-599.
    """
    phrase = REASON_PHRASES.get(status)
    if phrase is None:
        phrase = REASON_PHRASES.get(status // 100 * 100, "Unknown")
    return phrase


def _rendered(
    error: GatewayError, request_id: str, content_type: str, extra: dict[str, Any]
) -> RenderedError:
    payload: dict[str, Any] = {
        **extra,
        "error_message": error.message,
        "code": error.code,
        "request_id": request_id,
    }
    if error.details:
        payload["details"] = [d.as_dict() for d in error.details]
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = (
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        (ERROR_MARKER_HEADER, error.code),
        (REQUEST_ID_HEADER, request_id),
        *error.headers,
    )
    return RenderedError(status=error.status, headers=headers, body=body)


def render_error(error: GatewayError, *, request_id: str) -> RenderedError:
    """Render ``error`` as the platform's JSON error body (the default renderer).

    ``{"error_message": ..., "code": ..., "request_id": ...}``, plus ``details`` when the
    error lists problems.
    """
    return _rendered(error, request_id, "application/json", {})


def render_problem(error: GatewayError, *, request_id: str) -> RenderedError:
    """Render ``error`` as RFC 9457 ``application/problem+json``.

    The platform's fields are kept as extension members, so clients written for the default
    body keep working.
    """
    problem = {
        "type": f"urn:invoke-middleware:error:{error.code}",
        "title": reason_phrase(error.status),
        "status": error.status,
        "detail": error.message,
    }
    return _rendered(error, request_id, "application/problem+json", problem)
