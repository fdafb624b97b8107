"""invoke_middleware: a WSGI middleware that relays users' and agents' calls to container
services, safely.

Wrap a WSGI application with :class:`InvokeMiddleware`; it answers the runtime routes and
passes every other request through untouched. This module only re-exports the public names:
what a host needs to embed the middleware, and what an author of a custom transport, auth
resolver or service registry needs to implement one.

:class:`JWTResolver` and the transports are imported on first use, so
``import invoke_middleware`` loads neither PyJWT and cryptography nor requests and urllib3.
The fair-share :class:`Limiter` loads the ``limits`` library (and redis) only when a rate is
configured.
"""

from typing import TYPE_CHECKING

from invoke_middleware._lazy import lazy_attributes
from invoke_middleware.auth import (
    Action,
    AuthResolver,
    CredentialKind,
    CredentialRecord,
    CredentialResolver,
    CredentialStore,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    IssuedCredential,
    Membership,
    MembershipStore,
    Policy,
    Principal,
    Role,
    bearer_token,
    default_policy,
)
from invoke_middleware.errors import (
    ERROR_MARKER_HEADER,
    REQUEST_ID_HEADER,
    ErrorRenderer,
    GatewayError,
    RenderedError,
    StoreUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    render_error,
    render_problem,
)
from invoke_middleware.headers import Headers
from invoke_middleware.hooks import AfterRelayHook, BeforeRelayHook, RelayFinished, RelayStarted
from invoke_middleware.limits import (
    Limiter,
    LimitEvent,
    LimitHook,
    LimitSettings,
    Rate,
    ServiceLimits,
    TeamLimits,
    TeamLimitsSource,
)
from invoke_middleware.logging_hook import RelayLogger
from invoke_middleware.middleware import InvokeMiddleware
from invoke_middleware.pipeline import PipelineSettings, SecretResolver, ServiceSecretResolver
from invoke_middleware.registry import (
    InMemoryServiceRegistry,
    Service,
    ServiceRegistry,
    ServiceStatus,
    ServiceType,
)
from invoke_middleware.request import PipelineRequest
from invoke_middleware.transport import (
    DEFAULT_TIMEOUTS,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from invoke_middleware.auth import JWTResolver
    from invoke_middleware.transport import HTTPTransport, RequestsTransport, WSGITransport

__all__ = [
    "DEFAULT_TIMEOUTS",
    "ERROR_MARKER_HEADER",
    "REQUEST_ID_HEADER",
    "Action",
    "AfterRelayHook",
    "AuthResolver",
    "BeforeRelayHook",
    "CredentialKind",
    "CredentialRecord",
    "CredentialResolver",
    "CredentialStore",
    "ErrorRenderer",
    "GatewayError",
    "HTTPTransport",
    "Headers",
    "InMemoryCredentialStore",
    "InMemoryMembershipStore",
    "InMemoryServiceRegistry",
    "InvokeMiddleware",
    "IssuedCredential",
    "JWTResolver",
    "LimitEvent",
    "LimitHook",
    "LimitSettings",
    "Limiter",
    "Membership",
    "MembershipStore",
    "PipelineRequest",
    "PipelineSettings",
    "Policy",
    "Principal",
    "Rate",
    "RelayFinished",
    "RelayLogger",
    "RelayStarted",
    "RenderedError",
    "RequestsTransport",
    "Role",
    "SecretResolver",
    "Service",
    "ServiceLimits",
    "ServiceRegistry",
    "ServiceSecretResolver",
    "ServiceStatus",
    "ServiceType",
    "StoreUnavailableError",
    "TeamLimits",
    "TeamLimitsSource",
    "Timeouts",
    "Transport",
    "UpstreamError",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "UpstreamUnreachableError",
    "WSGITransport",
    "bearer_token",
    "default_policy",
    "render_error",
    "render_problem",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "HTTPTransport": "invoke_middleware.transport",
        "JWTResolver": "invoke_middleware.auth",
        "RequestsTransport": "invoke_middleware.transport",
        "WSGITransport": "invoke_middleware.transport",
    },
    # Names this package exported before: pipeline internals, and the old names of the
    # pipeline's request and settings.
    deprecated={
        "Gateway": ("invoke_middleware.pipeline", "Pipeline"),
        "GatewayRequest": ("invoke_middleware", "PipelineRequest"),
        "GatewayResponse": ("invoke_middleware.pipeline", "PipelineResponse"),
        "GatewaySettings": ("invoke_middleware", "PipelineSettings"),
        "KeyKind": ("invoke_middleware", "CredentialKind"),
        "Pipeline": ("invoke_middleware.pipeline", "Pipeline"),
        "PipelineResponse": ("invoke_middleware.pipeline", "PipelineResponse"),
    },
)

del TYPE_CHECKING, lazy_attributes
