"""The standalone gateway's configuration: one TOML file, read and checked in full at start.

Every key is optional except where noted; an unknown key is an error, so a typo never passes
silently. Paths (the SQLite store, JWT key files) are relative to the directory of the file.
:func:`load_config` raises :class:`ConfigError` with a one-line message that names the file and
the bad key. :func:`starter_config` is the commented file ``invoke-middleware init`` writes.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from invoke_middleware.relay import GatewaySettings
from invoke_middleware.transport.base import DEFAULT_TIMEOUTS, Timeouts

DEFAULT_CONFIG_NAME = "invoke-middleware.toml"
DEFAULT_STORE_NAME = "invoke-middleware.sqlite3"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THREADS = 8

#: POSIX portable environment variable names (IEEE Std 1003.1, Chapter 8).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JWT_KEY_SOURCES = ("secret_env", "secret_file", "public_key_file", "jwks_url")

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration file cannot be read or holds a bad value; the message names it."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where ``serve`` listens and with how many worker threads."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    threads: int = DEFAULT_THREADS


@dataclass(frozen=True, kw_only=True)
class JWTConfig:
    """How user JWTs are verified: exactly one key source, and the claims to check.

    ``secret_env`` names an environment variable holding an HMAC secret; ``secret_file`` and
    ``public_key_file`` are (absolute) paths read when the gateway starts; ``jwks_url`` is the
    identity provider's key set.
    """

    algorithms: tuple[str, ...]
    secret_env: str | None = None
    secret_file: Path | None = None
    public_key_file: Path | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | tuple[str, ...] | None = None
    leeway: float = 0.0
    cache_size: int = 0


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The whole configuration of a standalone gateway."""

    path: Path
    database: str | sa.URL
    service_cache_ttl: float
    server: ServerConfig
    prefix: str
    settings: GatewaySettings
    jwt: JWTConfig | None
    #: credential reference -> name of the environment variable holding the header value.
    secrets: Mapping[str, str] = field(default_factory=dict)

    def describe_database(self) -> str:
        """The store's URL, with any password hidden."""
        return sa.make_url(self.database).render_as_string(hide_password=True)


def load_config(path: Path) -> GatewayConfig:
    """Read and check the TOML file at ``path``."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (run `invoke-middleware init` to write one)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _Reader(path).config(document)


def database_from_setting(value: str, base: Path) -> str | sa.URL:
    """A ``[store] database`` setting as the store takes it.

    A value with ``://`` is a SQLAlchemy URL; anything else is a SQLite file, relative to
    ``base``.
    """
    if "://" in value:
        return value
    return sa.URL.create("sqlite", database=str((base / value).resolve()))


def sqlite_file(database: str | sa.URL) -> Path | None:
    """The file of a SQLite database URL, or ``None`` (another database, or in memory)."""
    url = sa.make_url(database)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


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
threads = {threads}

[gateway]
# Path under which the runtime routes are served, e.g. "/api/v1"; "" serves /r/... directly.
prefix = ""
# max_invoke_body_bytes = 10485760     # decoded body_base64 of an invoke request
# max_relay_body_bytes = 1073741824    # a streamed catch-all upload
# max_response_body_bytes = 10485760   # the buffered response of an invoke
# connect_timeout = 5.0                # seconds, to the upstream
# read_timeout = 60.0
# total_timeout = 300.0
# trusted_proxy_hops = 0               # proxies in front of the gateway trusted for X-Forwarded-*
# problem_json = false                 # errors as RFC 9457 application/problem+json

# User JWTs (Authorization: Bearer <jwt> with X-Team-ID). Without this table only sk-/dk-
# keys issued by `invoke-middleware credentials issue` are accepted.
# [jwt]
# algorithms = ["HS256"]
# secret_env = "INVOKE_JWT_SECRET"     # or: secret_file, public_key_file, jwks_url (exactly one)
# issuer = "https://idp.example"
# audience = "invoke-gateway"
# leeway = 0                           # seconds of clock skew allowed on exp/nbf
# cache_size = 10000                   # verified tokens kept; 0 disables the cache

[secrets]
# Credential references of external services (services add --credential-ref REF), each
# mapped to the NAME of an environment variable. The variable's value is sent verbatim as
# the Authorization header to that service, e.g. BILLING_API_AUTH="Bearer xyz".
# billing-api = "BILLING_API_AUTH"
"""


class _Reader:
    """Checks one parsed document; every error message names ``path`` and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.resolve().parent

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def table(self, document: Mapping[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
        value = document.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(f"[{name}]", "must be a table")
        for key in value:
            if key not in keys:
                raise self.fail(f"[{name}] {key}", "unknown key")
        return value

    def get(  # noqa: PLR0917 - reads as a table row at each call site
        self,
        table: Mapping[str, Any],
        name: str,
        key: str,
        check: Callable[[Any], T | None],
        expected: str,
        default: T,
    ) -> T:
        if key not in table:
            return default
        checked = check(table[key])
        if checked is None:
            raise self.fail(f"[{name}] {key}", f"must be {expected}, got {table[key]!r}")
        return checked

    def config(self, document: Mapping[str, Any]) -> GatewayConfig:
        for name in document:
            if name not in ("store", "server", "gateway", "jwt", "secrets"):
                raise self.fail(
                    f"[{name}]" if isinstance(document[name], dict) else name, "unknown key"
                )
        store = self.table(document, "store", {"database", "service_cache_ttl"})
        database = self.get(
            store, "store", "database", _text, "a non-empty string", DEFAULT_STORE_NAME
        )
        try:
            url = database_from_setting(database, self.base)
            sa.make_url(url)
        except sa.exc.ArgumentError:
            raise self.fail("[store] database", f"not a database URL: {database!r}") from None
        return GatewayConfig(
            path=self.path,
            database=url,
            service_cache_ttl=self.get(
                store, "store", "service_cache_ttl", _non_negative, "a number >= 0", 2.0
            ),
            server=self.server(document),
            prefix=self.prefix(document),
            settings=self.settings(document),
            jwt=self.jwt(document),
            secrets=self.secrets(document),
        )

    def server(self, document: Mapping[str, Any]) -> ServerConfig:
        table = self.table(document, "server", {"host", "port", "threads"})
        return ServerConfig(
            host=self.get(table, "server", "host", _text, "a non-empty string", DEFAULT_HOST),
            port=self.get(table, "server", "port", _port, "a port number (0-65535)", DEFAULT_PORT),
            threads=self.get(
                table, "server", "threads", _positive_int, "an integer >= 1", DEFAULT_THREADS
            ),
        )

    def prefix(self, document: Mapping[str, Any]) -> str:
        table = document.get("gateway", {})
        if not isinstance(table, dict):
            raise self.fail("[gateway]", "must be a table")
        return self.get(table, "gateway", "prefix", _prefix, 'a path such as "/api/v1" (or "")', "")

    def settings(self, document: Mapping[str, Any]) -> GatewaySettings:
        sizes = ("max_invoke_body_bytes", "max_relay_body_bytes", "max_response_body_bytes")
        times = ("connect_timeout", "read_timeout", "total_timeout")
        table = self.table(
            document,
            "gateway",
            {"prefix", *sizes, *times, "trusted_proxy_hops", "problem_json"},
        )
        defaults = GatewaySettings()
        limits = {
            key: self.get(
                table, "gateway", key, _positive_int, "an integer >= 1", getattr(defaults, key)
            )
            for key in sizes
        }
        timeouts = {
            key.removesuffix("_timeout"): self.get(
                table,
                "gateway",
                key,
                _positive,
                "a number of seconds > 0",
                getattr(DEFAULT_TIMEOUTS, key.removesuffix("_timeout")),
            )
            for key in times
        }
        return GatewaySettings(
            **limits,
            timeouts=Timeouts(**timeouts),
            trusted_proxy_hops=self.get(
                table,
                "gateway",
                "trusted_proxy_hops",
                _non_negative_int,
                "an integer >= 0",
                defaults.trusted_proxy_hops,
            ),
            problem_json=self.get(
                table, "gateway", "problem_json", _bool, "true or false", defaults.problem_json
            ),
        )

    def jwt(self, document: Mapping[str, Any]) -> JWTConfig | None:
        if "jwt" not in document:
            return None
        keys = {"algorithms", *_JWT_KEY_SOURCES, "issuer", "audience", "leeway", "cache_size"}
        table = self.table(document, "jwt", keys)
        if "algorithms" not in table:
            raise self.fail("[jwt] algorithms", 'missing (e.g. algorithms = ["RS256"])')
        sources = [key for key in _JWT_KEY_SOURCES if key in table]
        if len(sources) != 1:
            raise self.fail(
                "[jwt]", f"set exactly one of {', '.join(_JWT_KEY_SOURCES)} (found {len(sources)})"
            )
        return JWTConfig(
            algorithms=self.get(
                table, "jwt", "algorithms", _names, "a non-empty list of names", ()
            ),
            secret_env=self.get(
                table, "jwt", "secret_env", _env_name, "an environment variable name", None
            ),
            secret_file=self.get(table, "jwt", "secret_file", self._file, "a file path", None),
            public_key_file=self.get(
                table, "jwt", "public_key_file", self._file, "a file path", None
            ),
            jwks_url=self.get(table, "jwt", "jwks_url", _http_url, "an http(s) URL", None),
            issuer=self.get(table, "jwt", "issuer", _text, "a non-empty string", None),
            audience=self.get(
                table, "jwt", "audience", _audience, "a string or a list of strings", None
            ),
            leeway=self.get(table, "jwt", "leeway", _non_negative, "a number of seconds >= 0", 0.0),
            cache_size=self.get(
                table, "jwt", "cache_size", _non_negative_int, "an integer >= 0", 0
            ),
        )

    def secrets(self, document: Mapping[str, Any]) -> dict[str, str]:
        table = document.get("secrets", {})
        if not isinstance(table, dict):
            raise self.fail("[secrets]", "must be a table")
        for reference, name in table.items():
            if _env_name(name) is None:
                raise self.fail(
                    f"[secrets] {reference}",
                    f"must be the name of an environment variable, got {name!r}",
                )
        return dict(table)

    def _file(self, value: Any) -> Path | None:
        text = _text(value)
        return None if text is None else self.base / text


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _positive(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _non_negative(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number >= 0 else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _positive_int(value: Any) -> int | None:
    number = _integer(value)
    return number if number is not None and number >= 1 else None


def _non_negative_int(value: Any) -> int | None:
    number = _integer(value)
    return number if number is not None and number >= 0 else None


def _port(value: Any) -> int | None:
    number = _integer(value)
    return number if number is not None and 0 <= number <= 65535 else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _prefix(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if value == "":
        return value
    if not value.startswith("/") or "//" in value or any(c.isspace() for c in value):
        return None
    return value


def _env_name(value: Any) -> str | None:
    return value if isinstance(value, str) and _ENV_NAME.fullmatch(value) else None


def _names(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(_text(item) for item in value):
        return None
    return tuple(value)


def _audience(value: Any) -> str | tuple[str, ...] | None:
    return _text(value) if isinstance(value, str) else _names(value)


def _http_url(value: Any) -> str | None:
    text = _text(value)
    if text is None or not text.startswith(("https://", "http://")):
        return None
    return text
