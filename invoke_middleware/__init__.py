"""invoke_middleware: a WSGI middleware that relays users' and agents' calls to container
services, safely.

Wrap a WSGI application with :class:`InvokeMiddleware`; it answers the runtime routes and
passes every other request through untouched. This module only re-exports the public names.
"""

from invoke_middleware.auth.base import AuthResolver, bearer_token
from invoke_middleware.auth.credentials import CredentialResolver
from invoke_middleware.auth.jwt import JWTResolver
from invoke_middleware.auth.keys import KeyKind
from invoke_middleware.auth.policy import Action, Policy, default_policy
from invoke_middleware.auth.principal import CredentialKind, Principal, Role
from invoke_middleware.auth.stores import (
    CredentialRecord,
    CredentialStore,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    IssuedCredential,
    Membership,
    MembershipStore,
)
from invoke_middleware.errors import (
    ERROR_MARKER_HEADER,
    REQUEST_ID_HEADER,
    ErrorRenderer,
    GatewayError,
    RenderedError,
    render_error,
    render_problem,
)
from invoke_middleware.headers import Headers
from invoke_middleware.hooks import AfterRelayHook, BeforeRelayHook, RelayFinished, RelayStarted
from invoke_middleware.logging_hook import RelayLogger
from invoke_middleware.middleware import InvokeMiddleware
from invoke_middleware.pipeline import Pipeline, PipelineResponse, PipelineSettings, SecretResolver
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
    HTTPTransport,
    RequestsTransport,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
    WSGITransport,
)

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
    "KeyKind",
    "Membership",
    "MembershipStore",
    "Pipeline",
    "PipelineRequest",
    "PipelineResponse",
    "PipelineSettings",
    "Policy",
    "Principal",
    "RelayFinished",
    "RelayLogger",
    "RelayStarted",
    "RenderedError",
    "RequestsTransport",
    "Role",
    "SecretResolver",
    "Service",
    "ServiceRegistry",
    "ServiceStatus",
    "ServiceType",
    "Timeouts",
    "Transport",
    "UpstreamRequest",
    "UpstreamResponse",
    "WSGITransport",
    "bearer_token",
    "default_policy",
    "render_error",
    "render_problem",
]
