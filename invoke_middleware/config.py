"""Settings for the integrations: a flat mapping of values in, a configured middleware out.

Hosts configure the gateway where they configure everything else: an ini file (Pyramid,
PasteDeploy) or ``app.config`` (Flask). Every setting has one name, spelled ``invoke.<name>``
in ini files and ``INVOKE_<NAME>`` in Flask config (upper case, dots as underscores: the
ini ``invoke.jwt.secret_env`` is Flask's ``INVOKE_JWT_SECRET_ENV``)::

    config = parse_settings({"invoke.prefix": "/api/v1", "invoke.problem_json": "on"})
    app = config.build_middleware(app, before_relay=[audit])

Ini values arrive as strings and are converted here; Flask values may already be numbers,
booleans or lists. A blank value (or ``None``) leaves the setting at its default. An unknown
name in the namespace, a value of the wrong type or out of range, an unreadable key file, a
missing environment variable: each is a :class:`ConfigError` at start-up that names the
setting as the host spelled it. Secret values never appear in a message.

============================  ====================  =================  ======================================
name                          type                  default            meaning
============================  ====================  =================  ======================================
prefix                        path                  ""                 where the runtime routes live
database_url                  SQLAlchemy URL        in-memory stores   store for services, keys, members
service_cache_ttl             seconds ≥ 0           2                  service lookup cache (needs a URL)
max_invoke_body_bytes         int > 0               10 MiB             decoded invoke body cap
max_relay_body_bytes          int > 0               1 GiB              catch-all upload cap
max_response_body_bytes       int > 0               10 MiB             buffered invoke response cap
max_header_count              int > 0               100                request header count cap
max_header_bytes              int > 0               64 KiB             request header size cap
connect_timeout               seconds > 0           5                  upstream connect timeout
read_timeout                  seconds > 0           60                 upstream wait for each read
total_timeout                 seconds > 0, or none  300                the whole exchange; none: no limit
trusted_proxy_hops            int ≥ 0               0                  proxies trusted for X-Forwarded-*
pseudonym                     RFC 9110 token        invoke-middleware  the gateway's name in Via
problem_json                  bool                  false              errors as RFC 9457 problem+json
scope_cookies                 bool                  true               cookies kept to the service's path and team
sandbox_pages                 bool                  false              container pages run in their own origin
mcp_allowed_origins           list of origins       none               pages that may call /r/mcp
mcp_credential_kinds          list of sk, dk, jwt   sk                 credentials /r/mcp admits
ca_bundle                     PEM file              system store       CA bundle for external services
jwt.algorithms                list                  JWT off            algorithms user tokens may use
jwt.secret                    text                  —                  HMAC secret (prefer secret_env)
jwt.secret_env                env name              —                  variable holding the HMAC secret
jwt.secret_file               file                  —                  file holding the HMAC secret
jwt.public_key_file           PEM file              —                  the public key
jwt.jwks_url                  URL                   —                  the identity provider's JWKS
jwt.issuer                    text                  not checked        required iss
jwt.audience                  list                  not checked        accepted aud values
jwt.leeway                    seconds ≥ 0           0                  clock skew allowed on exp
jwt.cache_size                int ≥ 0               0 (off)            verified-token cache entries
limits.max_in_flight          int > 0               off                relays in flight in this process
limits.team_max_in_flight     int > 0               off                relays in flight per team
limits.service_max_in_flight  int > 0               off                relays in flight per service
limits.idle_team_reserve      int ≥ 0               off                global slots only idle teams may take
limits.queue_timeout          seconds ≥ 0           0                  wait for a global slot before the 429
limits.credential_rate        rate                  off                requests per window per credential
limits.user_rate              rate                  off                requests per window per user
limits.team_rate              rate                  off                requests per window per team
limits.service_rate           rate                  off                requests per window per service
limits.teams                  table                 none               per-team rate and max_in_flight
limits.storage_url            URL                   memory://          redis://... shares rate budgets
limits.key_prefix             text                  invoke-limits      namespace of the Redis keys
limits.storage_timeout        seconds > 0           0.5                bound on each Redis round trip
limits.rate_batch             int > 0               16                 requests one Redis round trip reserves
limits.fail_open              bool                  true               serve (true) or 503 when Redis is down
============================  ====================  =================  ======================================

A rate is written as the ``limits`` library writes it: ``100/minute``, ``10 per second``,
``1000 per 2 hours``. See :mod:`invoke_middleware.limits` and the README's "Fair share" section.

Booleans accept ``true/false``, ``yes/no``, ``on/off`` and ``1/0``; name lists are separated by
commas or spaces. JWT authentication is on when ``jwt.algorithms`` and exactly one key source
(``jwt.secret``, ``jwt.secret_env``, ``jwt.secret_file``, ``jwt.public_key_file``,
``jwt.jwks_url``) are set; one trailing newline of a secret file is not part of the secret.

The standalone gateway's TOML file uses the same settings (:attr:`KeyStyle.TOML`): the
``[gateway]`` table holds the names without a dot, the ``[jwt]`` table the ``jwt.`` ones, the
``[limits]`` table the ``limits.`` ones, and the store's two settings are its ``[store]``
table's business.
"""  # noqa: E501 - the settings table is wider than a line; see tests/test_settings.py

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from invoke_middleware._settings import (
    JWT_KEY_SOURCES,
    SETTING_NAMES,
    SETTINGS,
    STORE_SETTINGS,
    ConfigError,
    convert_setting,
    expected_text,
)
from invoke_middleware.auth.base import AuthResolver
from invoke_middleware.auth.credentials import CredentialResolver
from invoke_middleware.auth.policy import Policy
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.auth.stores import (
    CredentialStore,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    MembershipStore,
)
from invoke_middleware.errors import ErrorRenderer
from invoke_middleware.hooks import AfterRelayHook, BeforeRelayHook
from invoke_middleware.limits import Limiter, LimitHook, LimitSettings, TeamLimitsSource
from invoke_middleware.middleware import InvokeMiddleware
from invoke_middleware.pipeline import PipelineSettings, SecretResolver, ServiceSecretResolver
from invoke_middleware.registry import ServiceRegistry
from invoke_middleware.transport.base import DEFAULT_TIMEOUTS, Timeouts, Transport
from invoke_middleware.transport.http import HTTPTransport

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from invoke_middleware.auth.jwt import JWTResolver
    from invoke_middleware.store.sql import SQLStore

__all__ = [
    "SETTING_NAMES",
    "Collaborators",
    "ConfigError",
    "JWTSettings",
    "KeyStyle",
    "MiddlewareConfig",
    "UnresolvedConfig",
    "check_settings",
    "parse_flask_config",
    "parse_settings",
]

T = TypeVar("T")


class KeyStyle(StrEnum):
    """How a host spells setting names.

    ``TOML`` is the standalone gateway's file: ``[gateway] <name>``, ``[jwt] <name>`` and
    ``[limits] <name>``. Its
    values are typed, so a string where a number, boolean or list belongs is refused rather
    than parsed; the store's settings live in its ``[store]`` table instead.
    """

    INI = "ini"
    FLASK = "flask"
    TOML = "toml"

    def key(self, name: str) -> str:
        """The spelling of setting ``name`` (``jwt.secret``) in this style."""
        if self is KeyStyle.INI:
            return f"invoke.{name}"
        if self is KeyStyle.TOML:
            table, _, key = name.rpartition(".")
            return f"[{table or 'gateway'}] {key}"
        return "INVOKE_" + name.upper().replace(".", "_")

    def names(self) -> dict[str, str]:
        """Every setting this style knows, spelled -> name."""
        excluded = STORE_SETTINGS if self is KeyStyle.TOML else ()
        return {self.key(name): name for name in SETTINGS if name not in excluded}

    def owns(self, key: str) -> bool:
        """Whether ``key`` is in this style's namespace (the TOML tables hold nothing else)."""
        return self is KeyStyle.TOML or key.startswith(self.key(""))


class Collaborators(TypedDict, total=False):
    """The objects a host may pass next to the settings; see :class:`InvokeMiddleware`."""

    registry: ServiceRegistry
    credentials: CredentialStore
    memberships: MembershipStore
    resolvers: Sequence[AuthResolver]
    policy: Policy
    transport: Transport
    egress_transport: Transport
    secret_resolver: SecretResolver | ServiceSecretResolver
    before_relay: Sequence[BeforeRelayHook]
    after_relay: Sequence[AfterRelayHook]
    error_renderer: ErrorRenderer
    limiter: Limiter


# --- the result --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JWTSettings:
    """How user JWTs are verified; see :class:`~invoke_middleware.auth.jwt.JWTResolver`.

    Exactly one of ``key`` (an HMAC secret or a PEM public key) and ``jwks_url`` is set;
    ``key_setting`` names the setting the key came from, for messages.
    """

    algorithms: tuple[str, ...]
    key: str | bytes | None = field(default=None, repr=False)
    jwks_url: str | None = None
    key_setting: str = "jwt.jwks_url"
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    leeway: float = 0.0
    cache_size: int = 0

    def resolver(self, memberships: MembershipStore) -> JWTResolver:
        """A resolver for these settings that reads roles from ``memberships``."""
        # PyJWT and cryptography load only for a host that configures JWTs.
        from invoke_middleware.auth.jwt import JWTResolver  # noqa: PLC0415

        audience: str | tuple[str, ...] | None = None
        if len(self.audience) == 1:
            audience = self.audience[0]
        elif self.audience:
            audience = self.audience
        return JWTResolver(
            memberships,
            algorithms=self.algorithms,
            key=self.key,
            jwks_url=self.jwks_url,
            issuer=self.issuer,
            audience=audience,
            leeway=self.leeway,
            cache_size=self.cache_size,
        )


@dataclass(frozen=True, kw_only=True)
class MiddlewareConfig:
    """Validated settings, ready to build an :class:`InvokeMiddleware` (see the module docs).

    Without ``database_url`` the credential and membership stores and the registry are in
    memory; with it they are the views of one :class:`~invoke_middleware.store.SQLStore`.
    """

    prefix: str = ""
    database_url: str | None = field(default=None, repr=False)
    service_cache_ttl: float | None = None
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    jwt: JWTSettings | None = None
    ca_bundle: str | None = None
    limits: LimitSettings | None = None
    style: KeyStyle = KeyStyle.INI

    def build_middleware(
        self,
        app: WSGIApplication,
        *,
        on_limit: Sequence[LimitHook] = (),
        team_limits: TeamLimitsSource | None = None,
        **collaborators: Unpack[Collaborators],
    ) -> InvokeMiddleware:
        """Wrap ``app``; objects in ``collaborators`` replace the ones the settings describe.

        Raises :class:`ConfigError` when the settings cannot apply: JWT settings next to
        explicit ``resolvers``, ``ca_bundle`` next to an explicit ``egress_transport``, or a
        database that cannot be opened. ``on_limit`` hooks receive the refusals of the limiter
        that the ``limits.*`` settings describe (not of a ``limiter`` passed in), and
        ``team_limits`` gives it teams' own limits kept at run time (by default, the
        ``database_url`` store's).
        """
        if self.jwt is not None and "resolvers" in collaborators:
            raise ConfigError(
                self.style.key("jwt.algorithms"),
                "JWT settings build the default resolvers; pass a JWTResolver among your "
                "resolvers instead",
            )
        if self.ca_bundle is not None and "egress_transport" in collaborators:
            raise ConfigError(
                self.style.key("ca_bundle"),
                "configures the default egress transport; set it on the egress_transport "
                "you pass instead",
            )
        if self.database_url is not None and not all(
            name in collaborators for name in ("registry", "credentials", "memberships")
        ):
            store = self._open_store()
            collaborators.setdefault("registry", store.services)
            collaborators.setdefault("credentials", store.credentials)
            collaborators.setdefault("memberships", store.memberships)
            team_limits = team_limits or store.team_limits
        if self.jwt is not None:
            # Both resolvers must read the same stores, so they are made here.
            credentials = collaborators.setdefault("credentials", InMemoryCredentialStore())
            memberships = collaborators.setdefault("memberships", InMemoryMembershipStore())
            collaborators["resolvers"] = [
                CredentialResolver(credentials, memberships),
                self.jwt.resolver(memberships),
            ]
        if self.ca_bundle is not None:
            collaborators["egress_transport"] = HTTPTransport(ca_bundle=self.ca_bundle)
        if self.limits is not None and "limiter" not in collaborators:
            try:
                self.limits.check_reserve()
            except ValueError as exc:
                raise ConfigError(self.style.key("limits.idle_team_reserve"), str(exc)) from None
            try:
                collaborators["limiter"] = Limiter(
                    self.limits, on_event=on_limit, team_limits=team_limits
                )
            except ValueError as exc:
                raise ConfigError(self.style.key("limits.storage_url"), str(exc)) from None
        return InvokeMiddleware(app, prefix=self.prefix, settings=self.settings, **collaborators)

    def _open_store(self) -> SQLStore:
        assert self.database_url is not None
        import sqlalchemy as sa  # noqa: PLC0415 - only needed with a database

        from invoke_middleware._toml_config import sqlite_file  # noqa: PLC0415
        from invoke_middleware.store.sql import DEFAULT_SERVICE_CACHE_TTL, SQLStore  # noqa: PLC0415

        ttl = self.service_cache_ttl
        try:
            store = SQLStore(
                self.database_url,
                service_cache_ttl=DEFAULT_SERVICE_CACHE_TTL if ttl is None else ttl,
            )
        except ImportError as exc:
            raise ConfigError(
                self.style.key("database_url"), f"the database driver is missing ({exc.name})"
            ) from None
        except (ValueError, sa.exc.ArgumentError):
            # The exception's text may quote the URL, password included.
            raise ConfigError(
                self.style.key("database_url"), "names an unknown database driver"
            ) from None
        missing = sqlite_file(self.database_url)
        if missing is not None and not missing.exists():
            # SQLite would create an empty file on the first request, and every request
            # would then fail for want of tables: a typo in the path must stop start-up.
            store.close()
            raise ConfigError(
                self.style.key("database_url"),
                f"no database file at {missing}: create the store first "
                "(invoke-middleware init, or SQLStore(url).init())",
            )
        return store


# --- parsing -----------------------------------------------------------------------------


def parse_settings(settings: Mapping[str, object]) -> MiddlewareConfig:
    """Read the ``invoke.*`` keys of ini-style ``settings`` (other keys are ignored)."""
    return check_settings(settings, KeyStyle.INI).resolve()


def parse_flask_config(config: Mapping[str, object]) -> MiddlewareConfig:
    """Read the ``INVOKE_*`` keys of a Flask ``app.config`` (other keys are ignored)."""
    return check_settings(config, KeyStyle.FLASK).resolve()


@dataclass(frozen=True, kw_only=True)
class UnresolvedConfig:
    """Settings converted one by one and checked together, before anything is read.

    :meth:`resolve` reads what the settings point at (the JWT key from its environment
    variable or file), checks that the key suits the algorithms and gives the
    :class:`MiddlewareConfig`. The standalone gateway checks its file when it loads it and
    resolves when it starts, against the environment it starts in.
    """

    values: Mapping[str, Any] = field(repr=False)
    style: KeyStyle = KeyStyle.INI

    @property
    def prefix(self) -> str:
        """Where the runtime routes live."""
        prefix: str = self.values.get("prefix", "")
        return prefix

    @property
    def uses_jwt(self) -> bool:
        """Whether user JWTs are accepted."""
        return "jwt.algorithms" in self.values

    def resolve(self, environ: Mapping[str, str] = os.environ) -> MiddlewareConfig:
        """The configuration, with the JWT key read (``jwt.secret_env`` from ``environ``)."""
        return _assemble(self.values, self.style, environ)


def check_settings(
    source: Mapping[str, object], style: KeyStyle, *, base: str | None = None
) -> UnresolvedConfig:
    """Convert and check the keys of ``source`` that ``style`` owns (others are ignored).

    File paths are relative to ``base`` when it is given. Raises :class:`ConfigError`.
    """
    names = style.names()
    values: dict[str, Any] = {}
    for key, raw in source.items():
        if not style.owns(key):
            continue
        name = names.get(key)
        if name is None:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(key, f"unknown setting{hint}")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        setting = SETTINGS[name]
        if style is KeyStyle.TOML and not isinstance(raw, setting.typed):
            raise ConfigError(key, expected_text(setting, raw, typed=True))
        value = raw
        if setting.path and base is not None and isinstance(raw, str):
            value = os.path.join(base, os.path.expanduser(raw.strip()))
        values[name] = convert_setting(key, setting, value)
    if "service_cache_ttl" in values and "database_url" not in values:
        raise ConfigError(
            style.key("service_cache_ttl"), f"applies only with {style.key('database_url')}"
        )
    _check_jwt(values, style)
    return UnresolvedConfig(values=MappingProxyType(values), style=style)


def _assemble(
    values: Mapping[str, Any], style: KeyStyle, environ: Mapping[str, str]
) -> MiddlewareConfig:
    timeouts = Timeouts(
        connect=values.get("connect_timeout", DEFAULT_TIMEOUTS.connect),
        read=values.get("read_timeout", DEFAULT_TIMEOUTS.read),
        total=values.get("total_timeout", DEFAULT_TIMEOUTS.total),
    )
    pipeline = {
        name: values[name]
        for name in (
            "max_invoke_body_bytes",
            "max_relay_body_bytes",
            "max_response_body_bytes",
            "max_header_count",
            "max_header_bytes",
            "trusted_proxy_hops",
            "pseudonym",
            "problem_json",
            "scope_cookies",
            "sandbox_pages",
        )
        if name in values
    }
    if "mcp_allowed_origins" in values:
        pipeline["mcp_allowed_origins"] = values["mcp_allowed_origins"]
    if "mcp_credential_kinds" in values:
        pipeline["mcp_credential_kinds"] = frozenset(
            CredentialKind(kind) for kind in values["mcp_credential_kinds"]
        )
    return MiddlewareConfig(
        prefix=values.get("prefix", ""),
        database_url=values.get("database_url"),
        service_cache_ttl=values.get("service_cache_ttl"),
        settings=PipelineSettings(timeouts=timeouts, **pipeline),
        jwt=_jwt_settings(values, style, environ),
        ca_bundle=values.get("ca_bundle"),
        limits=_limit_settings(values),
        style=style,
    )


def _limit_settings(values: Mapping[str, Any]) -> LimitSettings | None:
    given = {
        name.removeprefix("limits."): value
        for name, value in values.items()
        if name.startswith("limits.")
    }
    if not given:
        return None
    return LimitSettings(**given)


def _check_jwt(values: Mapping[str, Any], style: KeyStyle) -> None:
    """The JWT rules that need neither the environment nor the key: one key source."""
    given = [name for name in SETTINGS if name.startswith("jwt.") and name in values]
    if not given:
        return
    sources = [name for name in JWT_KEY_SOURCES if name in values]
    if "jwt.algorithms" not in values:
        raise ConfigError(
            style.key("jwt.algorithms"), f"required with {style.key(given[0])}; e.g. RS256"
        )
    if len(sources) != 1:
        spelled = ", ".join(style.key(name) for name in JWT_KEY_SOURCES)
        problem = (
            f"set exactly one of {spelled}"
            if not sources
            else f"set only one of {spelled} (exactly one key source applies)"
        )
        raise ConfigError(style.key((sources or ["jwt.secret"])[-1]), problem)
    from jwt.algorithms import get_default_algorithms  # noqa: PLC0415 - only with JWT settings

    known = get_default_algorithms()
    for name in values["jwt.algorithms"]:
        if name.lower() == "none" or name not in known:
            raise ConfigError(
                style.key("jwt.algorithms"),
                f"unknown or refused algorithm {name!r}; choose from {', '.join(sorted(known))}",
            )


def _jwt_settings(
    values: Mapping[str, Any], style: KeyStyle, environ: Mapping[str, str]
) -> JWTSettings | None:
    if "jwt.algorithms" not in values:
        return None
    (source,) = (name for name in JWT_KEY_SOURCES if name in values)
    key: str | bytes | None = None
    if source == "jwt.secret":
        key = values["jwt.secret"]
    elif source == "jwt.secret_env":
        key = _environment_secret(values["jwt.secret_env"], style, environ)
    elif source == "jwt.secret_file":
        secret = _read_key_file(values[source], source, style)
        # One trailing newline, from an editor or `echo`, is not part of the secret.
        key = secret.removesuffix(b"\r\n" if secret.endswith(b"\r\n") else b"\n")
    elif source == "jwt.public_key_file":
        key = _read_key_file(values[source], source, style)
    settings = JWTSettings(
        algorithms=values["jwt.algorithms"],
        key=key,
        jwks_url=values.get("jwt.jwks_url"),
        key_setting=source,
        issuer=values.get("jwt.issuer"),
        audience=values.get("jwt.audience", ()),
        leeway=values.get("jwt.leeway", 0.0),
        cache_size=values.get("jwt.cache_size", 0),
    )
    # Build a resolver once now, so that a key that does not suit the algorithms (or an
    # HMAC algorithm next to a JWKS) fails at start-up and names its setting.
    try:
        settings.resolver(InMemoryMembershipStore())
    except ValueError as exc:
        blamed = "jwt.algorithms" if source == "jwt.jwks_url" else source
        raise ConfigError(style.key(blamed), str(exc)) from None
    return settings


def _environment_secret(variable: str, style: KeyStyle, environ: Mapping[str, str]) -> str:
    secret = environ.get(variable, "")
    if not secret:
        raise ConfigError(
            style.key("jwt.secret_env"), f"the environment variable {variable!r} is not set"
        )
    return secret


def _read_key_file(path: str, name: str, style: KeyStyle) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(style.key(name), f"cannot read {path!r} ({exc.strerror})") from None
