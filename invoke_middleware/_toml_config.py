"""The standalone gateway's configuration: one TOML file, read and checked in full at start.

Every key is optional except where noted; an unknown key is an error, so a typo never passes
silently. ``[store]``, ``[server]`` and ``[secrets]`` belong to the command line; ``[gateway]``,
``[jwt]`` and ``[limits]`` are the settings of :mod:`invoke_middleware.config`
(``invoke.read_timeout`` is ``[gateway] read_timeout``, ``invoke.jwt.leeway`` is ``[jwt] leeway``,
``invoke.limits.team_rate`` is ``[limits] team_rate``), converted and checked
by the same code. Paths (the SQLite store, key and CA files) are relative to the directory of
the file. :func:`load_config` raises :class:`~invoke_middleware.config.ConfigError` with a
one-line message ``<file>: [<table>] <key>: <problem>``. :func:`starter_config` is the
commented file ``invoke-middleware init`` writes.
"""

from __future__ import annotations

import difflib
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import sqlalchemy as sa

from invoke_middleware._settings import (
    SETTINGS,
    ConfigError,
    Setting,
    as_integer,
    as_text,
    convert_setting,
    environment_name,
    expected_text,
    positive_int,
)
from invoke_middleware.config import KeyStyle, UnresolvedConfig, check_settings

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_STORE_NAME",
    "ConfigError",
    "ServerConfig",
    "StandaloneConfig",
    "database_from_setting",
    "load_config",
    "sqlite_file",
    "starter_config",
]

DEFAULT_CONFIG_NAME = "invoke-middleware.toml"
DEFAULT_STORE_NAME = "invoke-middleware.sqlite3"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THREADS = 8


def _port(value: object) -> int:
    port = as_integer(value, 0)
    if port > 65535:
        raise ValueError
    return port


#: The CLI's own tables; ``[gateway]`` and ``[jwt]`` are the settings of the integrations.
_STORE = {
    "database": Setting(convert=as_text, expected="a SQLite file or an SQLAlchemy URL"),
    "service_cache_ttl": SETTINGS["service_cache_ttl"],
}
# -- [server]: where and how `serve` listens (the server's own limits included) -------------
ENGINES = ("gunicorn", "waitress")
LOG_FORMATS = ("text", "json")
DEFAULT_CONNECTION_LIMIT = 1000
DEFAULT_IDLE_TIMEOUT = 30


def _engine(value: object) -> str:
    engine = as_text(value).lower()
    if engine not in ENGINES:
        raise ValueError
    return engine


def _log_format(value: object) -> str:
    log_format = as_text(value).lower()
    if log_format not in LOG_FORMATS:
        raise ValueError
    return log_format


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


_SERVER = {
    "host": Setting(convert=as_text, expected="a host name or address"),
    "port": Setting(convert=_port, expected="a port number (0-65535)", typed=(int,)),
    "threads": Setting(convert=positive_int, expected="a positive integer", typed=(int,)),
    "engine": Setting(convert=_engine, expected='"gunicorn" or "waitress"'),
    "workers": Setting(convert=positive_int, expected="a positive integer", typed=(int,)),
    "connection_limit": Setting(convert=positive_int, expected="a positive integer", typed=(int,)),
    "idle_timeout": Setting(
        convert=positive_int, expected="whole seconds (1 or more)", typed=(int,)
    ),
    "max_request_header_bytes": Setting(
        convert=positive_int, expected="a positive integer", typed=(int,)
    ),
    "max_request_body_bytes": Setting(
        convert=positive_int, expected="a positive integer", typed=(int,)
    ),
    "metrics": Setting(convert=_flag, expected="true or false", typed=(bool,)),
    "metrics_token_env": Setting(convert=environment_name, expected="an environment variable name"),
    "log_format": Setting(convert=_log_format, expected='"text" or "json"'),
}
# -- end of [server] -------------------------------------------------------------------------
_SECRET_REFERENCE = Setting(convert=environment_name, expected="an environment variable name")


@dataclass(frozen=True, kw_only=True)
class SecretEntry:
    """One ``[secrets]`` entry: the environment variable holding the ``Authorization`` value,
    and the teams whose services may have it sent (``None``: any team's)."""

    env: str
    teams: frozenset[uuid.UUID] | None = None

    def allows(self, team_id: uuid.UUID | None) -> bool:
        """Whether a service of ``team_id`` may have this secret sent (of no known team:
        only when it is open to every team)."""
        return self.teams is None or team_id in self.teams


def _secret_entry(reference: str, raw: object) -> SecretEntry:
    key = f"[secrets] {reference}"
    if isinstance(raw, str):
        return SecretEntry(env=_check(key, _SECRET_REFERENCE, raw))
    if not isinstance(raw, dict) or "env" not in raw or not set(raw) <= {"env", "teams"}:
        raise ConfigError(
            key, 'expected an environment variable name, or { env = "NAME", teams = [...] }'
        )
    env = _check(key, _SECRET_REFERENCE, raw["env"])
    teams = raw.get("teams")
    if not isinstance(teams, list) or not teams:
        raise ConfigError(key, "teams: expected a list of team ids (at least one)")
    try:
        allowed = frozenset(uuid.UUID(str(team)) for team in teams)
    except ValueError:
        raise ConfigError(key, "teams: expected a list of team ids (UUIDs)") from None
    return SecretEntry(env=env, teams=allowed)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How ``serve`` runs the gateway: where it listens, on which server, with which limits.

    ``engine`` ``None`` picks gunicorn where it is installed and the platform can fork, else
    waitress; ``workers`` ``None`` is one process per core under gunicorn (waitress runs one).
    The header and body caps ``None`` follow the ``[gateway]`` caps (see
    :mod:`invoke_middleware._server`). ``connection_limit`` is per process; ``idle_timeout``
    closes a connection that sends nothing for that many seconds. ``metrics_token_env`` names
    the environment variable holding the bearer token ``/metrics`` asks for; without one,
    ``/metrics`` answers loopback clients only.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    threads: int = DEFAULT_THREADS
    engine: str | None = None
    workers: int | None = None
    connection_limit: int = DEFAULT_CONNECTION_LIMIT
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT
    max_request_header_bytes: int | None = None
    max_request_body_bytes: int | None = None
    metrics: bool = False
    metrics_token_env: str | None = None
    log_format: str = "text"


@dataclass(frozen=True, kw_only=True)
class StandaloneConfig:
    """The whole configuration of a standalone gateway.

    ``gateway`` holds the ``[gateway]`` and ``[jwt]`` tables, checked; the JWT key is read
    from the environment or its file when the gateway is built.
    """

    path: Path
    database: str | sa.URL
    service_cache_ttl: float
    server: ServerConfig
    gateway: UnresolvedConfig
    #: credential reference -> the environment variable holding the header value, and the
    #: teams whose services may use it.
    secrets: Mapping[str, SecretEntry] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Where the runtime routes live."""
        return self.gateway.prefix

    def describe_database(self) -> str:
        """The store's URL, with any password hidden."""
        return shown_url(self.database)


def load_config(path: Path) -> StandaloneConfig:
    """Read and check the TOML file at ``path``."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            str(path), "no such file (run `invoke-middleware init` to write one)"
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    try:
        return _read(path, document)
    except ConfigError as exc:
        raise exc.located(str(path)) from None


def database_from_setting(value: str, base: Path) -> str | sa.URL:
    """A ``[store] database`` setting as the store takes it.

    A value with ``://`` is a SQLAlchemy URL; anything else is a SQLite file, relative to
    ``base``.
    """
    if "://" in value:
        return value
    return sa.URL.create("sqlite", database=str((base / value).resolve()))


def shown_url(url: str | sa.URL) -> str:
    """The store's URL for people to read: its password hidden, in the user part and in the
    query (libpq reads ``password`` and ``sslpassword`` there too; any parameter whose name
    holds ``pass`` is shown as ``hidden``)."""
    url = sa.make_url(url)
    hidden = {
        name: "hidden" if "pass" in name.lower() else value for name, value in url.query.items()
    }
    return url.set(query=hidden).render_as_string(hide_password=True)


def sqlite_file(database: str | sa.URL, *, creating: bool = False) -> Path | None:
    """The file of a SQLite database URL, or ``None``: another database, one in memory, or
    a URI filename (``?uri=true``) that SQLite resolves some other way (a ``vfs`` other than
    the system's, a remote authority). With ``creating``, also ``None`` when a URI's
    ``mode`` forbids SQLite to create the file (``ro``, ``rw``): making it would override
    that."""
    url = sa.make_url(database)
    path = url.database
    if url.get_backend_name() != "sqlite" or path in (None, "", ":memory:"):
        return None
    if "uri" not in url.query or not path.startswith("file:"):
        return Path(path)  # without the prefix, SQLite reads even a URI name as a plain path
    # https://sqlite.org/uri.html: file:[//authority]path[?query][#fragment], the authority
    # empty or "localhost", the path percent-encoded. SQLAlchemy hands the URL's query on.
    rest = path.removeprefix("file:").partition("#")[0]
    if rest.startswith("//"):
        authority, slash, tail = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            return None
        rest = slash + tail
    rest, _, inner = rest.partition("?")
    params = dict(parse_qsl(inner))
    params.update((name, value) for name, value in url.query.items() if isinstance(value, str))
    mode = params.get("mode", "rwc")
    # SQLite's own VFSes for the system (unix, unix-excl, unix-dotfile, win32...) open a
    # plain file; another VFS may store the database anywhere.
    vfs = params.get("vfs", "unix")
    if mode == "memory" or not vfs.startswith(("unix", "win32")) or rest in ("", ":memory:"):
        return None
    if creating and mode != "rwc":
        return None
    return Path(unquote(rest))


def starter_config(database: str = DEFAULT_STORE_NAME) -> str:
    """The commented configuration ``invoke-middleware init`` writes."""
    return _STARTER.format(
        database=_toml_string(database),
        host=_toml_string(DEFAULT_HOST),
        port=DEFAULT_PORT,
        threads=DEFAULT_THREADS,
    )


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_STARTER = """\
# invoke-middleware standalone gateway.
# Every key below is optional; an unknown key is an error. Relative paths are relative to
# the directory of this file.

[store]
# A SQLite file (the embedded default), or a SQLAlchemy URL such as
# "postgresql://user@db.example/invoke" for several gateways sharing one store.
database = {database}
# Seconds a service lookup may be reused before the store is read again (0: never cached).
# Credential revocations and role changes always apply on the next request.
service_cache_ttl = 2.0

[server]
host = {host}
port = {port}
threads = {threads}                    # per process
# engine = "gunicorn"                  # or "waitress"; default: gunicorn when installed (the
#                                      # serve extra) on a platform with fork, else waitress
# workers = 2                          # processes (gunicorn only); default: one per core
# connection_limit = 1000              # open connections per process
# idle_timeout = 30                    # seconds a connection may stay silent
# max_request_header_bytes = 73728    # default: [gateway] max_header_bytes + 8 KiB
# max_request_body_bytes = 1073741824 # default: the larger [gateway] body cap
# metrics = false                      # GET /metrics (needs the metrics extra), for
#                                      # loopback clients only unless a token is set:
# metrics_token_env = "METRICS_TOKEN"  # variable holding the bearer token /metrics asks for
# log_format = "text"                  # "json": one JSON object per line, for log aggregators

[gateway]
# Path under which the runtime routes are served, e.g. "/api/v1"; "" serves /r/... directly.
prefix = ""
# max_invoke_body_bytes = 10485760     # decoded body_base64 of an invoke request
# max_relay_body_bytes = 1073741824    # a streamed catch-all upload
# max_response_body_bytes = 10485760   # the buffered response of an invoke
# max_header_count = 100               # headers of a request (and of an invoke envelope)
# max_header_bytes = 65536             # their total size
# connect_timeout = 5.0                # seconds, to the upstream
# read_timeout = 60.0                  # seconds of waiting for each read
# total_timeout = 300.0                # seconds for the whole exchange; "none": no limit
# trusted_proxy_hops = 0               # proxies in front of the gateway trusted for X-Forwarded-*
# pseudonym = "invoke-middleware"      # the gateway's name in the Via header
# problem_json = false                 # errors as RFC 9457 application/problem+json
# scope_cookies = true                 # a container's cookies kept to its service's path and team
# sandbox_pages = false                # container pages run in an origin of their own (CSP sandbox)
# mcp_allowed_origins = ["https://app.example"]  # pages that may call /r/mcp (default: none)
# mcp_credential_kinds = ["sk"]        # credentials /r/mcp admits, among "sk", "dk", "jwt"
# ca_bundle = "ca.pem"                 # PEM CA bundle for external services (default: system)

# User JWTs (Authorization: Bearer <jwt> with X-Team-ID). Without this table only sk-/dk-
# keys issued by `invoke-middleware credentials issue` are accepted.
# [jwt]
# algorithms = ["HS256"]
# Exactly one key source: secret_env (an environment variable holding the HMAC secret),
# secret_file (a file holding it; one trailing newline is ignored), public_key_file (PEM),
# jwks_url (the identity provider's key set) or secret (the HMAC secret itself).
# secret_env = "INVOKE_JWT_SECRET"
# issuer = "https://idp.example"
# audience = "invoke-gateway"          # or a list of accepted audiences
# leeway = 0                           # seconds of clock skew allowed on exp/nbf
# cache_size = 10000                   # verified tokens kept; 0 disables the cache

[limits]
# Fair share between teams (README, "Fair share"). Unless set here, each team may hold at most
# half of the server's threads with relays in flight, and all teams together all but one, of
# which a quarter only teams with nothing in flight may take.
# team_max_in_flight = 4               # relays in flight per team (default: threads / 2)
# max_in_flight = 7                    # relays in flight in all (default: threads - 1)
# idle_team_reserve = 1                # of those, for idle teams (default: max_in_flight / 4)
# service_max_in_flight = 4            # relays in flight per service
# queue_timeout = 0                    # seconds a request may wait for a global slot before its 429
# Requests per window, written like "100/minute" or "10 per second":
# credential_rate = "10/second"        # per sk-/dk- credential
# user_rate = "600/minute"             # per user
# team_rate = "6000/minute"            # per team
# service_rate = "1000/minute"         # per service (or its own: services set-limits)
# storage_url = "memory://"            # or "redis://127.0.0.1:6379/0": one budget for many gateways
# key_prefix = "invoke-limits"         # namespace of the Redis keys
# storage_timeout = 0.5                # seconds for each Redis round trip
# rate_batch = 16                      # requests of a window one Redis round trip reserves
# fail_open = true                     # Redis down: serve (true, logged and counted) or 503 (false)
# One team's own team_rate and team_max_in_flight, by team id:
# teams."6f1c2a4e-0000-4000-8000-000000000000" = {{ rate = "60000/minute", max_in_flight = 6 }}

[secrets]
# Credential references of external services (services add --credential-ref REF), each
# mapped to the NAME of an environment variable. The variable's value is sent verbatim as
# the Authorization header to that service, e.g. BILLING_API_AUTH="Bearer xyz". With teams,
# only those teams' services get it (any other's requests are refused with 502).
# billing-api = "BILLING_API_AUTH"
# payroll = {{ env = "PAYROLL_AUTH", teams = ["6f1c2a4e-0000-4000-8000-000000000000"] }}
"""


def _read(path: Path, document: Mapping[str, Any]) -> StandaloneConfig:
    for name, value in document.items():
        if name not in ("store", "server", "gateway", "jwt", "limits", "secrets"):
            raise ConfigError(f"[{name}]" if isinstance(value, dict) else name, "unknown key")
    base = path.resolve().parent
    store = _values(document, "store", _STORE)
    database = store.get("database", DEFAULT_STORE_NAME)
    try:
        url = database_from_setting(database, base)
        sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # Never the value itself: a URL holds the database's password.
        raise ConfigError(
            "[store] database", "not a database URL (dialect://user:password@host:port/name)"
        ) from None
    server = _values(document, "server", _SERVER)
    if "metrics_token_env" in server and not server.get("metrics", False):
        raise ConfigError("[server] metrics_token_env", "applies only with metrics = true")
    if server.get("engine") == "waitress" and server.get("workers", 1) > 1:
        raise ConfigError(
            "[server] workers", 'waitress runs one process: set engine = "gunicorn" for more'
        )
    # Spelled as KeyStyle.TOML spells the settings, so a key of one table never names a
    # setting of the other.
    flat = {
        f"[{table}] {key}": value
        for table in ("gateway", "jwt", "limits")
        for key, value in _table(document, table).items()
    }
    secrets = {
        reference: _secret_entry(reference, raw)
        for reference, raw in _table(document, "secrets").items()
    }
    return StandaloneConfig(
        path=path,
        database=url,
        service_cache_ttl=store.get("service_cache_ttl", 2.0),
        server=ServerConfig(**server),
        gateway=check_settings(flat, KeyStyle.TOML, base=str(base)),
        secrets=secrets,
    )


def _table(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}]", "must be a table")
    return table


def _values(
    document: Mapping[str, Any], name: str, settings: Mapping[str, Setting]
) -> dict[str, Any]:
    """The keys of the CLI's own table ``name``, converted like the settings' (a blank value
    is the default)."""
    values: dict[str, Any] = {}
    for key, raw in _table(document, name).items():
        setting = settings.get(key)
        if setting is None:
            close = difflib.get_close_matches(key, settings, n=1)
            hint = f"; did you mean [{name}] {close[0]}?" if close else ""
            raise ConfigError(f"[{name}] {key}", f"unknown setting{hint}")
        if not (isinstance(raw, str) and not raw.strip()):
            values[key] = _check(f"[{name}] {key}", setting, raw)
    return values


def _check(key: str, setting: Setting, raw: object) -> Any:
    if not isinstance(raw, setting.typed):
        raise ConfigError(key, expected_text(setting, raw, typed=True))
    return convert_setting(key, setting, raw)
