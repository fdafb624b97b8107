"""The framework-free relay pipeline: authenticate, authorize, look up, build, send.

:class:`Pipeline` takes a :class:`~invoke_middleware.request.PipelineRequest` and a
:class:`~invoke_middleware.routing.RouteMatch` and returns a :class:`PipelineResponse`; it never
sees WSGI. Every :class:`~invoke_middleware.errors.GatewayError` raised on the way is rendered
here, by the configured error renderer, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol, cast

from invoke_middleware import headers as hdr
from invoke_middleware._bodies import (
    RelayBody,
    ResponseBuffer,
    read_capped,
    relay_content_length,
    request_body,
)
from invoke_middleware.auth.base import AuthResolver
from invoke_middleware.auth.policy import Action, Policy, authorize, default_policy
from invoke_middleware.auth.principal import CredentialKind, Principal
from invoke_middleware.cookies import scope_cookies
from invoke_middleware.envelope import encode_response_pieces, parse_envelope
from invoke_middleware.errors import (
    REQUEST_ID_HEADER,
    ErrorRenderer,
    GatewayError,
    LoopDetectedError,
    MethodNotAllowedError,
    ServiceNotFoundError,
    ServiceNotRunningError,
    UnauthenticatedError,
    UnsupportedMediaTypeError,
    UpgradeNotSupportedError,
    UpstreamError,
    as_gateway_error,
    reason_phrase,
    render_error,
    render_problem,
)
from invoke_middleware.hooks import (
    AfterRelayHook,
    BeforeRelayHook,
    RelayFinished,
    RelayStarted,
    call_hooks,
)
from invoke_middleware.limits import UNLIMITED, Limiter
from invoke_middleware.pages import PAGE_SANDBOX, renders_as_page
from invoke_middleware.registry import Service, ServiceRegistry, ServiceType, is_valid_slug
from invoke_middleware.request import PipelineRequest
from invoke_middleware.routing import RouteKind, RouteMatch
from invoke_middleware.target import build_target_url
from invoke_middleware.transport.base import (
    DEFAULT_TIMEOUTS,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

logger = logging.getLogger("invoke_middleware")

MiB = 1024 * 1024
_RELAY_FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE"})
_METADATA_METHODS = ("GET", "HEAD")


class _Counted(Exception):
    """A refusal of an admitted request, with the rate-limit fields its answer carries."""

    def __init__(self, error: GatewayError, headers: tuple[tuple[str, str], ...]) -> None:
        super().__init__(error)
        self.error = error
        self.headers = headers


#: Added to every relayed response. One URL is a different service for each team (slugs are
#: unique within a team) and answers each caller as its credentials allow: a shared cache in
#: front of the gateway that stored a container's ``Cache-Control: public`` answer by URL
#: alone would hand it to another team. These are the fields the bundled resolvers read.
_VARY_BY_CALLER: Final = ("Vary", f"Authorization, {hdr.TEAM_HEADER}")


class SecretResolver(Protocol):
    """Turns an external service's ``external_auth_credential_id`` into the value of the
    ``Authorization`` header sent to it (``None`` when the reference is unknown)."""

    def __call__(self, credential_id: str) -> str | None: ...


class ServiceSecretResolver(Protocol):
    """A secret resolver told which service the secret is for: its ``team_id`` as well as its
    ``external_auth_credential_id``. Where teams name their services' credential references
    themselves, it is how each team's secrets stay with that team's services (a reference
    copied onto another team's service must get ``None``, never the secret). The pipeline
    calls :meth:`secret_for` whenever a resolver has one."""

    def secret_for(self, service: Service) -> str | None: ...


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """Limits and behaviour switches of the gateway.

    ``max_invoke_body_bytes`` caps the decoded ``body_base64`` of an invoke envelope;
    ``max_relay_body_bytes`` caps a catch-all upload (streamed, so it can be large);
    ``max_response_body_bytes`` caps the buffered invoke response (over it: 502
    ``response_too_large``). ``trusted_proxy_hops`` says how many proxies in front of the
    gateway may set ``X-Forwarded-*``. ``pseudonym`` names the gateway in ``Via``.
    ``problem_json`` renders errors as RFC 9457 ``application/problem+json``.
    ``scope_cookies`` keeps each ``Set-Cookie`` a container sends through the catch-all to its
    own service's path, and an ``HttpOnly`` one to its team, and passes a service no cookie
    kept to another team (:mod:`invoke_middleware.cookies`); off, they are relayed as written.
    ``sandbox_pages`` sends every catch-all answer a browser may render as a page with
    ``Content-Security-Policy: sandbox``, so that its scripts run in an origin of their own,
    not the one every team's services share (:mod:`invoke_middleware.pages`).
    ``mcp_allowed_origins`` lists the origins (``https://app.example``) whose pages may call the
    MCP endpoint (any other ``Origin`` gets 403); ``mcp_credential_kinds`` the credential kinds
    it admits (integration keys only, by default).
    """

    max_invoke_body_bytes: int = 10 * MiB
    max_relay_body_bytes: int = 1024 * MiB
    max_response_body_bytes: int = 10 * MiB
    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    trusted_proxy_hops: int = 0
    pseudonym: str = "invoke-middleware"
    problem_json: bool = False
    scope_cookies: bool = True
    sandbox_pages: bool = False
    mcp_allowed_origins: tuple[str, ...] = ()
    mcp_credential_kinds: frozenset[CredentialKind] = frozenset({CredentialKind.INTEGRATION})

    @property
    def max_envelope_bytes(self) -> int:
        # base64 grows the body by 4/3; the rest of the envelope (method, path, headers) is
        # bounded by the header caps and the path limit.
        return self.max_invoke_body_bytes * 4 // 3 + 4 + 2 * self.max_header_bytes + 4096


@dataclass(kw_only=True)
class PipelineResponse:
    """What the pipeline answers: status, headers and a (possibly streamed) body.

    ``body`` may have a ``close()``; the WSGI adapter hands it to the server, which calls it.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Iterable[bytes] = field(default_factory=tuple)


def _json_response(status: int, payload: object, request_id: str) -> PipelineResponse:
    return _json_body_response(
        status, (json.dumps(payload, separators=(",", ":")).encode(),), request_id
    )


def _json_body_response(
    status: int, pieces: tuple[bytes, ...], request_id: str
) -> PipelineResponse:
    """A JSON answer whose body is ``pieces`` joined (sent one by one)."""
    return PipelineResponse(
        status=status,
        reason=reason_phrase(status),
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Length", str(sum(len(piece) for piece in pieces))),
            ("Cache-Control", "no-store"),
            (REQUEST_ID_HEADER, request_id),
        ],
        body=pieces,
    )


class Pipeline:
    """The relay pipeline, with its collaborators.

    Build one per application and call :meth:`handle` for each runtime request; it is
    thread-safe as long as its collaborators are. ``transport`` carries the relays to
    deployed services and ``egress_transport`` those to external ones; each left out is an
    :class:`~invoke_middleware.transport.http.HTTPTransport` of its own (pass the same
    object twice to share one). :meth:`close` closes them.
    """

    def __init__(
        self,
        *,
        registry: ServiceRegistry,
        resolvers: Sequence[AuthResolver],
        transport: Transport | None = None,
        egress_transport: Transport | None = None,
        policy: Policy = default_policy,
        secret_resolver: SecretResolver | ServiceSecretResolver | None = None,
        before_relay: Sequence[BeforeRelayHook] = (),
        after_relay: Sequence[AfterRelayHook] = (),
        error_renderer: ErrorRenderer | None = None,
        settings: PipelineSettings | None = None,
        limiter: Limiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or PipelineSettings()
        self.limiter = limiter
        self.registry = registry
        self.resolvers = tuple(resolvers)
        # Each default is a pool of its own: connections to external services never share a
        # pool (nor its TLS settings) with the deployed services'.
        self.transport = transport if transport is not None else _default_transport()
        self.egress_transport = (
            egress_transport if egress_transport is not None else _default_transport()
        )
        self.policy = policy
        self.secret_resolver = secret_resolver
        self.before_relay = tuple(before_relay)
        self.after_relay = tuple(after_relay)
        if error_renderer is None:
            error_renderer = render_problem if self.settings.problem_json else render_error
        self.render = error_renderer
        self._clock = clock
        self._forwarding = hdr.ForwardingRules(
            pseudonym=self.settings.pseudonym, trusted_hops=self.settings.trusted_proxy_hops
        )
        # The MCP endpoint answers its tools by calling this gateway back.
        from invoke_middleware.mcp.endpoint import MCPEndpoint  # noqa: PLC0415 - it imports us

        self.mcp = MCPEndpoint(self, clock=clock)

    def close(self) -> None:
        """Close the transports (their pooled connections), each once, and the limiter's
        connections to its store."""
        self.transport.close()
        if self.egress_transport is not self.transport:
            self.egress_transport.close()
        if self.limiter is not None:
            self.limiter.close()

    # -- entry point -------------------------------------------------------------------

    def handle(self, request: PipelineRequest, route: RouteMatch) -> PipelineResponse:
        """Answer one runtime request. Never raises for a caller's mistake or an upstream's."""
        request_id = hdr.choose_request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            response = self._dispatch(request, route, request_id)
        except _Counted as counted:
            response = self.failure_response(counted.error, request_id)
            response.headers.extend(counted.headers)
        except Exception as error:
            response = self.failure_response(error, request_id)
        if request.method == "HEAD" and isinstance(response.body, tuple):
            # A gateway-made answer to HEAD keeps its headers, Content-Length included, and
            # drops the body (RFC 9110 §9.3.2). Relayed bodies are the upstream's, empty.
            response.body = ()
        return response

    def dispatch(
        self, request: PipelineRequest, route: RouteMatch, request_id: str
    ) -> PipelineResponse:
        """Answer one runtime request as :meth:`handle` does, under ``request_id``, but render
        nothing: a refusal is raised as its :class:`~invoke_middleware.errors.GatewayError`
        and an unexpected failure propagates. For a caller that reports refusals in a shape of
        its own (the MCP endpoint's tool errors), whatever the configured renderer writes.

        The ``RateLimit`` fields :meth:`handle` adds to the refusal of an admitted request
        are not raised with it: they belong to an answer, and the error may be an instance a
        host's transport raises again and again."""
        try:
            return self._dispatch(request, route, request_id)
        except _Counted as counted:
            error = counted.error
        raise error

    def check_header_limits(self, request: PipelineRequest) -> None:
        """Raise :class:`~invoke_middleware.errors.HeadersTooLargeError` (431) when the
        request's fields are over the settings' caps."""
        settings = self.settings
        hdr.check_header_limits(
            request.headers,
            max_count=settings.max_header_count,
            max_bytes=settings.max_header_bytes,
        )

    def failure_response(self, error: Exception, request_id: str) -> PipelineResponse:
        """The answer to a request that raised ``error``: a refusal rendered as it is, any
        other failure logged (with its traceback: call it while ``error`` is handled) and
        answered 500 ``internal_error``."""
        if not isinstance(error, GatewayError):
            logger.exception("unexpected failure handling request %s", request_id)
            error = GatewayError()
        return self.error_response(error, request_id)

    def error_response(self, error: GatewayError, request_id: str) -> PipelineResponse:
        """Render ``error`` with the configured renderer."""
        rendered = self.render(error, request_id=request_id)
        return PipelineResponse(
            status=rendered.status,
            reason=reason_phrase(rendered.status),
            headers=list(rendered.headers),
            body=(rendered.body,),
        )

    def _dispatch(
        self, request: PipelineRequest, route: RouteMatch, request_id: str
    ) -> PipelineResponse:
        kind = route.kind
        if kind is RouteKind.MCP:
            # It checks the header caps itself: its refusals to a page carry CORS fields.
            return self.mcp.handle(request, request_id)
        settings = self.settings
        if not request.within_caller:
            # A part of a request (an MCP tool call) carries the caller's fields, checked with
            # it, and a few of the gateway's own: not the caller's to answer for.
            self.check_header_limits(request)
        if kind is RouteKind.CATCH_ALL:
            if request.method in _RELAY_FORBIDDEN_METHODS:
                raise MethodNotAllowedError(
                    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                    f"{request.method} is not relayed.",
                )
            if "Upgrade" in request.headers:
                raise UpgradeNotSupportedError()
        elif kind is RouteKind.INVOKE:
            if request.method != "POST":
                raise MethodNotAllowedError(["POST"])
        elif request.method not in _METADATA_METHODS:
            raise MethodNotAllowedError(list(_METADATA_METHODS))

        if kind in (RouteKind.INVOKE, RouteKind.CATCH_ALL) and hdr.is_loop(
            request.headers, settings.pseudonym
        ):
            # Checked before authentication: a looping request has lost its credentials.
            raise LoopDetectedError()
        principal = self._authenticate(request)
        if kind is RouteKind.LIST:
            authorize(self.policy, principal, Action.LIST, None)
            # Filtered again, as a single lookup is (_lookup): a registry of the host's that
            # answers with another team's service must not show it.
            team_id = principal.team_id
            services = [s for s in self.registry.list(team_id) if s.team_id == team_id]
            payload = {"services": [s.public_metadata() for s in services]}
            return _json_response(200, payload, request_id)

        service = self._lookup(principal, route.slug)
        if kind is RouteKind.GET:
            authorize(self.policy, principal, Action.GET, service)
            return _json_response(200, service.public_metadata(), request_id)

        authorize(
            self.policy,
            principal,
            Action.INVOKE if kind is RouteKind.INVOKE else Action.CATCH_ALL,
            service,
        )
        if not service.is_running:
            raise ServiceNotRunningError(
                f"The service is {service.service_status.value}, not running."
            )
        # Fair share (README, "Fair share"): after authentication and authorization, before any
        # upstream work; the slot is held until the response ends, however it ends.
        # MCP tool calls come through here too, as invoke and catch-all requests of their own:
        # the endpoint and the REST routes share one budget.
        admission = UNLIMITED
        if self.limiter is not None:
            admission = self.limiter.admit(
                principal,
                service,
                route=kind,
                request_id=request_id,
                within_caller=request.within_caller,
            )
        try:
            gone = request.client_gone
            if admission is not UNLIMITED and gone is not None and gone():
                # It may have waited for a slot (queue_timeout), and its caller has left
                # meanwhile: nothing goes upstream, and the answer reaches nobody.
                admission.release()
                return PipelineResponse(
                    status=503,
                    reason=reason_phrase(503),
                    headers=[("Content-Length", "0")],
                    body=(),
                )
            if kind is RouteKind.INVOKE:
                response = self._invoke(request, principal, service, request_id)
            else:
                response = self._relay(
                    request, route, principal, service, request_id, replaced=admission.replaces
                )
        except GatewayError as error:
            admission.release()
            if not admission.headers:
                raise
            # Counted all the same: the refusal says what is left, as an answer does. The
            # fields travel beside the error, never on it: a host's transport may raise one
            # instance again and again, and each request's would pile up on it.
            raise _Counted(error, admission.headers) from error
        except BaseException:
            admission.release()
            raise
        if admission is UNLIMITED:
            return response  # nothing to add, no slot to give back
        # An invoke's fields are the gateway's own; a relay's lost the upstream's RateLimit
        # fields, if the admission replaces them, with the rest of the filtering.
        return admission.hold(response, replaced=True, until_close=request.written_by_close)

    # -- steps -------------------------------------------------------------------------

    def _authenticate(self, request: PipelineRequest) -> Principal:
        for resolver in self.resolvers:
            principal = resolver(request)
            if principal is not None:
                return principal
        raise UnauthenticatedError()

    def _lookup(self, principal: Principal, slug: str | None) -> Service:
        # Invalid, unknown and other teams' slugs all get the same 404 (docs/contract.md §1).
        if slug is None or not is_valid_slug(slug):
            raise ServiceNotFoundError()
        service = self.registry.get(principal.team_id, slug)
        if service is None or service.team_id != principal.team_id:
            raise ServiceNotFoundError()
        return service

    def _transport_for(self, service: Service) -> Transport:
        if service.service_type is ServiceType.EXTERNAL:
            return self.egress_transport
        return self.transport

    def _upstream_headers(
        self,
        request: PipelineRequest,
        service: Service,
        request_id: str,
        envelope: tuple[tuple[str, str], ...] | None,
        cookie_team: uuid.UUID | None = None,
    ) -> tuple[tuple[str, str], ...]:
        authorization = None
        if service.service_type is ServiceType.EXTERNAL and service.external_auth_credential_id:
            resolver = self.secret_resolver
            secret_for = getattr(resolver, "secret_for", None)
            if secret_for is not None:
                authorization = secret_for(service)
            elif resolver is not None:
                plain = cast("SecretResolver", resolver)
                authorization = plain(service.external_auth_credential_id)
            if authorization is None:
                logger.error(
                    "no secret for credential reference of service %s (request %s)",
                    service.slug,
                    request_id,
                )
                raise UpstreamError("The service's credential is not available.")
            if hdr.UNSENDABLE_VALUE_PATTERN.search(authorization):
                # The service's setting, not the caller's request: a 502 like a missing
                # secret, never the transport's 400 for a field that cannot be sent.
                logger.error(
                    "the secret for service %s cannot be sent as a header field "
                    "(a control character, or a character beyond Latin-1) (request %s)",
                    service.slug,
                    request_id,
                )
                raise UpstreamError("The service's credential cannot be sent.")
        return hdr.forward_request_headers(
            request.headers,
            remote_addr=request.remote_addr,
            scheme=request.scheme,
            host=request.host,
            request_id=request_id,
            envelope=envelope,
            authorization=authorization,
            cookie_team=cookie_team,
            rules=self._forwarding,
        )

    def _invoke(
        self, request: PipelineRequest, principal: Principal, service: Service, request_id: str
    ) -> PipelineResponse:
        settings = self.settings
        require_json(request)
        raw = read_capped(request, settings.max_envelope_bytes)
        # The envelope's headers go upstream as a header section: the same caps apply, and
        # are checked before the envelope is validated.
        envelope = parse_envelope(
            raw,
            max_body_bytes=settings.max_invoke_body_bytes,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
        )
        url = build_target_url(service.base_url, envelope.path)
        path = envelope.path.partition("?")[0]
        tenant, share = _pool_keys(principal.team_id, principal.user_id, principal.credential_id)
        timeouts = service.timeouts.merged_over(settings.timeouts)
        limit = settings.max_response_body_bytes
        shared = request.allowance
        if shared is not None:
            timeouts = shared.bounded(timeouts)
            limit = min(limit, shared.bytes_left)
        upstream = UpstreamRequest(
            method=envelope.method,
            url=url,
            headers=self._upstream_headers(request, service, request_id, envelope.headers),
            body=envelope.body if envelope.body or envelope.method not in ("GET", "HEAD") else None,
            content_length=len(envelope.body),
            timeouts=timeouts,
            tenant=tenant,
            share=share,
        )
        relay = self._start(
            request_id=request_id,
            route=RouteKind.INVOKE.value,
            principal=principal,
            service=service,
            method=envelope.method,
            path=path,
        )
        status, error_code, bytes_in, head = 502, None, 0, 0
        buffer = ResponseBuffer(limit)
        try:
            response = _final(self._transport_for(service).send(upstream))
            # The body went in one piece: it counts once the upstream answered. (A request
            # to a service that is down sent nothing, whatever its size.)
            bytes_in = len(envelope.body)
            if shared is not None:
                head = sum(len(name) + len(value) + 4 for name, value in response.headers)
            try:
                body = buffer.read(response, envelope.method)
            finally:
                response.close()
            status = response.status
            payload = encode_response_pieces(
                response.status, hdr.filter_response_headers(response.headers), body
            )
        except Exception as error:
            failure = as_gateway_error(error)
            status, error_code = failure.status, failure.code
            raise
        finally:
            if shared is not None:  # what was read counts, whatever came of it
                shared.take(head + buffer.received)
            self._finish(relay, status, bytes_in, buffer.received, error_code)
        return _json_body_response(200, payload, request_id)

    def _relay(
        self,
        request: PipelineRequest,
        route: RouteMatch,
        principal: Principal,
        service: Service,
        request_id: str,
        *,
        replaced: frozenset[str],
    ) -> PipelineResponse:
        """Relay to the catch-all route; the upstream's fields named in ``replaced`` (the
        gateway writes its own) are dropped."""
        settings = self.settings
        tail = route.tail
        url = build_target_url(service.base_url, tail, request.query or None)
        body, length = request_body(request, settings.max_relay_body_bytes)
        tenant, share = _pool_keys(principal.team_id, principal.user_id, principal.credential_id)
        upstream = UpstreamRequest(
            method=request.method,
            url=url,
            headers=self._upstream_headers(
                request,
                service,
                request_id,
                None,
                cookie_team=principal.team_id if settings.scope_cookies else None,
            ),
            body=body,
            content_length=length,
            timeouts=service.timeouts.merged_over(settings.timeouts),
            tenant=tenant,
            share=share,
        )
        relay = self._start(
            request_id=request_id,
            route=RouteKind.CATCH_ALL.value,
            principal=principal,
            service=service,
            method=request.method,
            path=tail,
        )
        try:
            response = _final(self._transport_for(service).send(upstream))
            stream = RelayBody(
                response,
                on_end=lambda received, code: self._finish(
                    relay, response.status, body.sent if body else 0, received, code
                ),
            )
            # Read here, not by the server: a failure before the first byte is still an error
            # response of the gateway's (docs/contract.md §8), whatever the server.
            stream.prime()
        except Exception as error:
            failure = as_gateway_error(error)
            self._finish(relay, failure.status, body.sent if body else 0, 0, failure.code)
            raise
        headers = hdr.filter_response_headers(response.headers, also_drop=_relay_drop(replaced))
        if settings.scope_cookies:
            headers = scope_cookies(
                headers,
                route.mount,
                tail,
                principal.team_id,
                mark_every_cookie=settings.sandbox_pages,
            )
        if settings.sandbox_pages and renders_as_page(headers):
            headers.append(PAGE_SANDBOX)
        response_length = relay_content_length(request.method, response)
        if response_length is not None:
            headers.append(("Content-Length", response_length))
        headers.append((REQUEST_ID_HEADER, request_id))
        headers.append(_VARY_BY_CALLER)
        return PipelineResponse(
            status=response.status,
            reason=_safe_reason(response.reason, response.status),
            headers=headers,
            body=stream,
        )

    def _start(
        self,
        *,
        request_id: str,
        route: str,
        principal: Principal,
        service: Service,
        method: str,
        path: str,
    ) -> _Relay | None:
        """Tell the before-relay hooks; ``None`` when there are no hooks to tell, before or
        after."""
        if not self.before_relay and not self.after_relay:
            return None
        event = RelayStarted(
            request_id=request_id,
            route=route,
            principal=principal,
            service=service,
            method=method,
            path=path,
        )
        if self.before_relay:
            call_hooks(self.before_relay, event)
        return _Relay(event, self._clock())

    def _finish(
        self,
        relay: _Relay | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        error_code: str | None,
    ) -> None:
        if relay is None or not self.after_relay:
            return
        call_hooks(
            self.after_relay,
            RelayFinished(
                started=relay.event,
                status=status,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                duration=self._clock() - relay.started,
                error_code=error_code,
            ),
        )


class _Relay(NamedTuple):
    """A relay in flight: what the hooks were told, and when it started."""

    event: RelayStarted
    started: float


@functools.lru_cache(maxsize=8)
def _relay_drop(replaced: frozenset[str]) -> frozenset[str]:
    """What the catch-all drops of a container's response besides what every route drops: the
    fields the gateway writes itself on it (``replaced``), and those a browser would apply to
    the whole shared origin. The same one or two sets on every response: joined once."""
    return replaced | hdr.ORIGIN_WIDE_HEADERS


def _final(response: UpstreamResponse) -> UpstreamResponse:
    """``response``, unless it is not a final answer: a ``101`` (only ever an answer to an
    upgrade, which the gateway never relays: the caller got 501 before asking), or any other
    1xx a transport let through. A WSGI server cannot send either to the caller."""
    if response.status < 200:
        response.close()
        raise UpstreamError("The service switched protocols; upgrades are not relayed.")
    return response


def require_json(request: PipelineRequest) -> None:
    """Refuse (415) a body that is not JSON as it stands: a media type other than
    ``application/json``, or a content coding (``Content-Encoding: gzip``), which the gateway
    does not undo (then ``Accept-Encoding: identity`` says so, RFC 9110 §15.5.16)."""
    content_type = (request.headers.get("Content-Type") or "").partition(";")[0]
    if content_type.strip().lower() != "application/json":
        raise UnsupportedMediaTypeError()
    coding = request.headers.get("Content-Encoding")
    if coding is not None and coding.strip(" \t").lower() not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            "The request body must be application/json without a content coding.",
            headers=(("Accept-Encoding", "identity"),),
        )


@functools.lru_cache(maxsize=4096)
def _pool_keys(
    team_id: uuid.UUID, user_id: str | None, credential_id: str | None
) -> tuple[str, str]:
    # The upstream request's tenant and share. Transports pool connections per tenant: the
    # caller, a user (whatever credential it presents) or, without one, a team's key. No
    # connection, and so no byte an upstream sends past the end of a response, passes from
    # one team to another, nor from one caller to another: an upstream that answers a request
    # it never got (a caller's body that is itself a request, sent to one that answers before
    # reading) puts every later answer on that connection one behind, for that caller only
    # (README, security). The connections count in the team's share of a transport's idle
    # ones: a team of many callers holds no more of them than a team of one. Cached:
    # formatting a UUID costs more than the rest of building the upstream request.
    team = str(team_id)
    if user_id is not None:
        return f"{team} user {user_id}", team
    if credential_id is not None:
        return f"{team} key {credential_id}", team
    return team, team


def _safe_reason(reason: str, status: int) -> str:
    # The upstream's reason phrase goes into our status line: keep it only when it is plain
    # visible ASCII (RFC 9112 §4 allows more, but nothing a client needs).
    if reason and reason.isascii() and reason.isprintable() and len(reason) <= 64:
        return reason
    return reason_phrase(status)


def _default_transport() -> Transport:
    """A pooled :class:`~invoke_middleware.transport.http.HTTPTransport` of its own.

    Imported here, not at the top: http.client, ssl and email cost a third of the package's
    import time, and a host that brings its own transports never needs them.
    """
    from invoke_middleware.transport.http import HTTPTransport  # noqa: PLC0415

    return HTTPTransport()
