"""The WSGI adapter: :class:`InvokeMiddleware` wraps a host application.

It answers the runtime routes (docs/contract.md §1) and passes every other request to the host app
untouched: the same environ object, the same response bytes. Usage::

    from flask import Flask
    from invoke_middleware import InvokeMiddleware, InMemoryServiceRegistry

    app = Flask(__name__)
    registry = InMemoryServiceRegistry()
    app.wsgi_app = InvokeMiddleware(app.wsgi_app, registry=registry, prefix="/api/v1")

This module is the only one that knows WSGI: it turns the environ into a
:class:`~invoke_middleware.request.PipelineRequest`, asks the
:class:`~invoke_middleware.pipeline.Pipeline`, and writes its answer back.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes

from invoke_middleware._bodies import close_body
from invoke_middleware.auth.base import AuthResolver
from invoke_middleware.auth.credentials import CredentialResolver
from invoke_middleware.auth.policy import Policy, default_policy
from invoke_middleware.auth.stores import (
    CredentialStore,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    MembershipStore,
)
from invoke_middleware.errors import (
    ErrorRenderer,
    GatewayError,
    InvalidPathError,
    InvalidRequestError,
)
from invoke_middleware.headers import CONTENT_LENGTH_PATTERN, Headers, choose_request_id
from invoke_middleware.hooks import AfterRelayHook, BeforeRelayHook
from invoke_middleware.limits import Limiter
from invoke_middleware.pipeline import (
    Pipeline,
    PipelineSettings,
    SecretResolver,
    ServiceSecretResolver,
)
from invoke_middleware.registry import InMemoryServiceRegistry, ServiceRegistry
from invoke_middleware.request import CLIENT_GONE_KEY, WRITTEN_BY_CLOSE_KEY, PipelineRequest
from invoke_middleware.routing import RouteKind, RouteMatch, Router
from invoke_middleware.transport.base import Transport

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# U+FFFD as a PEP 3333 environ string carries it: what a lossy UTF-8 decoding leaves.
_LOST_BYTES = "\ufffd".encode().decode("latin-1")

# Characters left as they are when a decoded path has to be re-encoded (RFC 3986 pchar).
_PCHAR_SAFE = "/:@!$&'()*+,;=-._~"


class InvokeMiddleware:
    """Answers the runtime routes under ``prefix``; passes everything else to ``app``.

    Collaborators are keyword-only and all have working defaults: an empty in-memory
    registry; in-memory credential and membership stores (``self.credentials`` and
    ``self.memberships``) read by a
    :class:`~invoke_middleware.auth.credentials.CredentialResolver` when ``resolvers`` is not
    given; the pooled :class:`~invoke_middleware.transport.http.HTTPTransport` for deployed
    services and a second one for external services (egress), as
    :class:`~invoke_middleware.pipeline.Pipeline` makes them. See
    :class:`~invoke_middleware.pipeline.PipelineSettings` for limits and timeouts, and ``limiter``
    (:class:`~invoke_middleware.limits.Limiter`) for fair-share concurrency and rate limits.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        prefix: str = "",
        registry: ServiceRegistry | None = None,
        credentials: CredentialStore | None = None,
        memberships: MembershipStore | None = None,
        resolvers: Sequence[AuthResolver] | None = None,
        policy: Policy = default_policy,
        transport: Transport | None = None,
        egress_transport: Transport | None = None,
        secret_resolver: SecretResolver | ServiceSecretResolver | None = None,
        before_relay: Sequence[BeforeRelayHook] = (),
        after_relay: Sequence[AfterRelayHook] = (),
        error_renderer: ErrorRenderer | None = None,
        settings: PipelineSettings | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.app = app
        self.router = Router(prefix)
        self.credentials = credentials if credentials is not None else InMemoryCredentialStore()
        self.memberships = memberships if memberships is not None else InMemoryMembershipStore()
        if resolvers is None:
            resolvers = [CredentialResolver(self.credentials, self.memberships)]
        self.pipeline = Pipeline(
            registry=registry if registry is not None else InMemoryServiceRegistry(),
            resolvers=resolvers,
            policy=policy,
            transport=transport,
            egress_transport=egress_transport,
            secret_resolver=secret_resolver,
            before_relay=before_relay,
            after_relay=after_relay,
            error_renderer=error_renderer,
            settings=settings,
            limiter=limiter,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = self.router.match(environ.get("PATH_INFO", "") or "/")
        if route is None:
            return self.app(environ, start_response)
        try:
            if route.kind is RouteKind.CATCH_ALL:
                route = self._catch_all_route(environ, route)
            request = _pipeline_request(environ)
        except GatewayError as error:
            request_id = choose_request_id(environ.get("HTTP_X_REQUEST_ID"))
            response = self.pipeline.error_response(error, request_id)
        else:
            response = self.pipeline.handle(request, route)
        try:
            start_response(f"{response.status} {response.reason}", response.headers)
        except BaseException:
            # The server refused the headers: the body will never be iterated or closed by
            # it, so release the upstream connection here.
            close_body(response.body)
            raise
        return response.body

    def _catch_all_route(self, environ: WSGIEnvironment, route: RouteMatch) -> RouteMatch:
        """The catch-all's route with its tail as the client spelled it, for the path checks,
        and its mount as the client spelled it, for the cookies' paths."""
        slug = route.slug
        assert slug is not None
        raw = _raw_path_info(environ)
        root, tail = (None, None) if raw is None else (raw[0], self.router.raw_tail(raw[1], slug))
        mount = ""  # unknown: the client escaped the route itself
        if tail is not None or raw is None:
            # The route as the client spelled it, or, without a raw target, as it decodes.
            if root is None:
                root = _quoted_root(environ.get("SCRIPT_NAME", ""))
            mount = root + self.router.mount(slug)
        if tail is None:
            # The raw target is unavailable or spells the route with escapes: fall back to the
            # decoded tail, re-encoded. Dot segments still reach the path checks.
            try:
                tail = quote(route.tail.encode("latin-1"), safe=_PCHAR_SAFE)
            except UnicodeEncodeError:
                # PEP 3333 environ strings are Latin-1; anything else did not come from a client.
                raise InvalidPathError() from None
        return RouteMatch(kind=RouteKind.CATCH_ALL, slug=slug, tail=tail, mount=mount)

    @property
    def registry(self) -> ServiceRegistry:
        """The service registry the runtime routes look services up in."""
        return self.pipeline.registry

    @property
    def gateway(self) -> Pipeline:
        """Deprecated name of :attr:`pipeline`."""
        warnings.warn(
            "InvokeMiddleware.gateway is deprecated; use .pipeline (or .registry)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.pipeline

    def close(self) -> None:
        """Close the pipeline's transports (their pooled connections) and its limiter's."""
        self.pipeline.close()


# The environ keys of the header fields without the HTTP_ prefix (PEP 3333).
_CONTENT_KEYS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


@functools.lru_cache(maxsize=1024)
def _field_name(environ_key: str) -> str:
    """``HTTP_X_TEAM_ID`` -> ``X-Team-Id``; ``CONTENT_TYPE`` -> ``Content-Type``."""
    if environ_key[:5] == "HTTP_":
        environ_key = environ_key[5:]
    return environ_key.replace("_", "-").title()


def _header_fields(environ: WSGIEnvironment) -> list[tuple[str, str]]:
    # Servers put an absent CONTENT_TYPE or CONTENT_LENGTH in the environ as "" (PEP 3333
    # allows it): that is no field.
    return [
        (_field_name(key), value)
        for key, value in environ.items()
        if key[:5] == "HTTP_" or (key in _CONTENT_KEYS and value)
    ]


def _pipeline_request(environ: WSGIEnvironment) -> PipelineRequest:
    length_text = (environ.get("CONTENT_LENGTH") or "").strip()
    content_length = None
    if length_text:
        if CONTENT_LENGTH_PATTERN.fullmatch(length_text) is None:
            raise InvalidRequestError("The Content-Length header is not a number.")
        content_length = int(length_text)
    if "HTTP_TRANSFER_ENCODING" in environ:
        # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length. A server that passes
        # both on must not make the gateway trust the length (request smuggling).
        content_length = None
    # PEP 3333 leaves chunked input to the server; only one that marks the input terminated
    # (werkzeug, gunicorn, the ASGI adapter) lets us read to its end safely. Over HTTP/2 and
    # HTTP/3 a body needs neither field (a frame flag ends it, RFC 9113 §8.1): without a
    # length, such a request's body is read to its end too, not taken for none.
    chunked = (
        content_length is None
        and ("HTTP_TRANSFER_ENCODING" in environ or _framed_by_frames(environ))
        and bool(environ.get("wsgi.input_terminated"))
    )
    return PipelineRequest(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        path=environ.get("PATH_INFO", ""),
        query=environ.get("QUERY_STRING", ""),
        # The one copy of the request's fields: the pipeline filters it into the upstream's.
        headers=Headers(_header_fields(environ)),
        remote_addr=environ.get("REMOTE_ADDR", ""),
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""),
        body=environ["wsgi.input"],
        content_length=content_length,
        chunked=chunked,
        # A host that put anything but a callable there must not break its requests.
        client_gone=gone if callable(gone := environ.get(CLIENT_GONE_KEY)) else None,
        written_by_close=environ.get(WRITTEN_BY_CLOSE_KEY) is True,
    )


def _framed_by_frames(environ: WSGIEnvironment) -> bool:
    """Whether the request came over HTTP/2 or HTTP/3, where frames, not fields, end a body."""
    return str(environ.get("SERVER_PROTOCOL", "")).upper() in ("HTTP/2", "HTTP/2.0", "HTTP/3")


def _quoted_root(script_name: str) -> str:
    """``SCRIPT_NAME`` percent-encoded, for when the target does not show how it was spelled."""
    if not script_name:
        return ""
    return quote(script_name.encode("latin-1", "replace"), safe=_PCHAR_SAFE)


def _raw_path_info(environ: WSGIEnvironment) -> tuple[str | None, str] | None:
    """SCRIPT_NAME and PATH_INFO as the client spelled them (still percent-encoded), when the
    server kept the target; SCRIPT_NAME is ``None`` when the target leaves it out.

    Servers put the request target in ``REQUEST_URI`` or ``RAW_URI``; it is only trusted when
    it decodes to exactly ``SCRIPT_NAME + PATH_INFO`` (or ``PATH_INFO`` alone). When the server
    replaced bytes it could not decode, :class:`InvalidPathError` is raised.
    """
    target: Any = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not isinstance(target, str):
        return None
    path = target.partition("?")[0]
    if not path.startswith("/"):
        # absolute-form (RFC 9112 §3.2.2): drop scheme and authority.
        slash = path.find("/", path.find("//") + 2) if "//" in path else -1
        if slash < 0:
            return None
        path = path[slash:]
    script_name = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "")
    if "%" in path or not path.isascii():
        decoded = unquote_to_bytes(path).decode("latin-1")
    else:
        decoded = path  # nothing to decode
    if decoded == path_info and decoded != script_name + path_info:
        # The target leaves out the mount point (a proxy stripped the prefix it sets as
        # SCRIPT_NAME, or a test client): it spells PATH_INFO alone.
        return None, path
    if decoded != script_name + path_info:
        if _LOST_BYTES in path_info and _LOST_BYTES not in decoded:
            # The server decoded the path lossily (invalid or overlong UTF-8 became U+FFFD):
            # what the client sent is unknown, so it is not relayed.
            raise InvalidPathError("The server could not decode the path as it was sent.")
        return None
    if not script_name:
        return "", path
    # Find where the raw SCRIPT_NAME ends: the shortest raw prefix that decodes to it.
    # An escape is three characters, so the raw form is at most three times as long.
    for index in range(len(script_name), min(len(path), 3 * len(script_name)) + 1):
        if unquote_to_bytes(path[:index]).decode("latin-1") == script_name:
            return path[:index], path[index:]
    return None
