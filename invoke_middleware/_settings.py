"""The table of settings and how each value is converted and checked.

:data:`SETTINGS` is the one table of settings: the README's settings table, the table in
:mod:`invoke_middleware.config` and the standalone starter file follow it (tests compare them).
It serves every way a host configures the gateway: ini files and Flask config
(:mod:`invoke_middleware.config`) and the standalone gateway's TOML file
(:mod:`invoke_middleware._toml_config`). A converter takes a raw value (a string from an ini
file, or a typed value) and returns it converted, or raises :class:`ValueError`; the table
says what each setting expects, so every error can name the setting and what it takes.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from invoke_middleware.headers import is_token
from invoke_middleware.routing import Router


class ConfigError(ValueError):
    """A setting is unknown, missing or malformed, or a configuration file is unreadable.

    ``key`` is the setting as the host spelled it (``invoke.jwt.leeway``,
    ``INVOKE_JWT_LEEWAY``, ``[jwt] leeway``) or the file that cannot be read; ``source`` is
    the file the setting is in, when there is one. The message is
    ``[<source>: ]<key>: <problem>``.
    """

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        located = key if source is None else f"{source}: {key}"
        super().__init__(f"{located}: {problem}")
        self.key = key
        self.problem = problem
        self.source = source

    def located(self, source: str) -> ConfigError:
        """This error, naming the file ``source`` the setting is in."""
        return ConfigError(self.key, self.problem, source=source)


# --- converters: each takes a raw value and returns it converted, or raises ValueError ------


def as_text(value: object) -> str:
    """A string, stripped."""
    if not isinstance(value, str):
        raise ValueError
    return value.strip()


def as_integer(value: object, minimum: int) -> int:
    """An integer (not a bool) of at least ``minimum``; digits in a string are parsed."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = int(value.strip())
    if not isinstance(value, int) or value < minimum:
        raise ValueError
    return value


def positive_int(value: object) -> int:
    """An integer of at least 1."""
    return as_integer(value, 1)


def _count(value: object) -> int:
    return as_integer(value, 0)


#: The longest duration a setting takes: a day. Longer waits are no use to a gateway, and the
#: clocks under them have bounds (``select.poll`` takes at most 2**31 - 1 ms, ``threading``'s
#: waits ``TIMEOUT_MAX``) that a huge value would only meet at request time, as a 500.
MAX_SECONDS: Final = 86_400.0


def _seconds(value: object, *, zero_allowed: bool) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value.strip())
    if not isinstance(value, int | float):
        raise ValueError
    seconds = float(value)
    if not 0 <= seconds <= MAX_SECONDS or (seconds == 0 and not zero_allowed):
        raise ValueError
    return seconds


def _positive_seconds(value: object) -> float:
    return _seconds(value, zero_allowed=False)


def _seconds_or_zero(value: object) -> float:
    return _seconds(value, zero_allowed=True)


def _total_seconds(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return _positive_seconds(value)


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = as_text(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        names = tuple(value.replace(",", " ").split())
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        names = tuple(item.strip() for item in value if item.strip())
    else:
        raise ValueError
    if not names:
        raise ValueError
    return names


def _origins(value: object) -> tuple[str, ...]:
    # An origin is scheme://host[:port] (RFC 6454 §6.2): no path, no trailing slash.
    origins = _names(value)
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or origin != (f"{parts.scheme}://{parts.netloc}")
        ):
            raise ValueError
    return tuple(origin.lower() for origin in origins)


#: What ``mcp_credential_kinds`` may name: the token kinds of the README's auth table.
_CREDENTIAL_KINDS = {"sk": "integration", "dk": "device", "jwt": "jwt"}


def _credential_kinds(value: object) -> frozenset[str]:
    names = _names(value)
    if any(name not in _CREDENTIAL_KINDS for name in names):
        raise ValueError
    return frozenset(_CREDENTIAL_KINDS[name] for name in names)


def _prefix(value: object) -> str:
    return Router(as_text(value)).prefix


def _database_url(value: object) -> str:
    text = as_text(value)
    try:
        import sqlalchemy as sa  # noqa: PLC0415 - only needed with a database
    except ImportError as exc:
        raise Refused("needs the 'sql' extra: pip install 'invoke_middleware[sql]'") from exc
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ValueError from exc
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise Refused("only sqlite:// and postgresql:// databases are supported")
    return text


def _pseudonym(value: object) -> str:
    text = as_text(value)
    if not is_token(text):
        raise ValueError
    return text


def _readable_file(value: object) -> str:
    path = os.path.expanduser(as_text(value))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise Refused(f"cannot read the file {path!r}")
    return path


def _ca_bundle(value: object) -> str:
    path = _readable_file(value)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise Refused(f"{path!r} holds no usable PEM certificates") from exc
    return path


def _http_url(value: object) -> str:
    text = as_text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    return text


#: POSIX portable environment variable names (IEEE Std 1003.1, Chapter 8).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def environment_name(value: object) -> str:
    """A POSIX environment variable name."""
    text = as_text(value)
    if not _ENV_NAME.fullmatch(text):
        raise ValueError
    return text


class Refused(ValueError):
    """A converter's own explanation, used instead of the setting's expected type."""


def _rate(value: object) -> Any:
    from invoke_middleware.limits import Rate  # noqa: PLC0415 - loads the limits library

    try:
        return Rate.parse(as_text(value))
    except ValueError as exc:
        raise Refused(f"{exc}; expected {_RATE}") from None


def _storage_url(value: object) -> str:
    from invoke_middleware._rate_counters import STORAGE_SCHEMES  # noqa: PLC0415

    text = as_text(value)
    scheme, separator, _ = text.partition("://")
    if not separator or scheme not in STORAGE_SCHEMES:
        raise Refused(
            f"expected memory:// or a redis:// URL (schemes: {', '.join(STORAGE_SCHEMES)})"
        )
    if scheme != "memory":
        try:
            import redis  # noqa: F401, PLC0415 - only checked: the limiter loads it
        except ImportError:
            raise Refused(
                "needs the 'redis' extra: pip install 'invoke_middleware[redis]'"
            ) from None
    return text


def _team_limits(value: object) -> Any:
    """``{team-uuid: {rate = "100/minute", max_in_flight = 4}}`` (a TOML table or a dict)."""
    import uuid  # noqa: PLC0415

    from invoke_middleware.limits import TeamLimits  # noqa: PLC0415

    if not isinstance(value, dict):
        raise ValueError
    teams = {}
    for team, table in value.items():
        try:
            team_id = uuid.UUID(str(team))
        except ValueError:
            raise Refused(f"{team!r} is not a team UUID") from None
        if not isinstance(table, dict) or not set(table) <= {"rate", "max_in_flight"}:
            raise Refused(f"team {team}: expected a table with rate and/or max_in_flight")
        try:
            rate = table.get("rate")
            teams[team_id] = TeamLimits(
                rate=None if rate is None else _rate(rate),
                max_in_flight=(
                    None
                    if table.get("max_in_flight") is None
                    else positive_int(table["max_in_flight"])
                ),
            )
        except ValueError:
            raise Refused(
                f'team {team}: rate is like "100/minute", max_in_flight a positive integer'
            ) from None
    return teams


_RATE = "a rate such as 100/minute or 10 per second"
_INT = (int,)
_NUMBER = (int, float)
_STR = (str,)


def _flag(doc: SettingDoc) -> Setting:
    """A boolean setting: true/false, on/off, 1/0 in text; a TOML boolean."""
    return Setting(
        doc=doc,
        convert=_boolean,
        expected="a boolean (true/false, on/off, 1/0)",
        typed=(bool,),
        typed_expected="true or false",
    )


@dataclass(frozen=True, kw_only=True)
class SettingDoc:
    """How the settings table in the README and in :mod:`invoke_middleware.config` shows a
    setting (a test keeps both tables equal to these)."""

    type: str
    default: str
    meaning: str


@dataclass(frozen=True, kw_only=True)
class Setting:
    """How one setting is converted, and how the documentation shows it (``doc``).

    ``typed`` are the types a typed source (TOML) may give: there a string is never parsed
    into a number, boolean or list, and ``typed_expected`` (when set) says what it takes. A
    ``path`` is relative to the configuration file, when there is one.
    """

    convert: Callable[[object], Any]
    doc: SettingDoc | None = None
    expected: str
    typed: tuple[type, ...] = _STR
    typed_expected: str | None = None
    secret: bool = False
    path: bool = False


SETTINGS: dict[str, Setting] = {
    "prefix": Setting(
        doc=SettingDoc(type="path", default='""', meaning="where the runtime routes live"),
        convert=_prefix,
        expected="a path starting with '/' of ASCII path characters, no escapes (or empty)",
    ),
    "database_url": Setting(
        doc=SettingDoc(
            type="SQLAlchemy URL",
            default="in-memory stores",
            meaning="store for services, keys, members",
        ),
        convert=_database_url,
        expected="an SQLAlchemy URL such as sqlite:///invoke.db",
        secret=True,  # may carry a password
    ),
    "service_cache_ttl": Setting(
        doc=SettingDoc(
            type="seconds ≥ 0", default="2", meaning="service lookup cache (needs a URL)"
        ),
        convert=_seconds_or_zero,
        expected="seconds (0 or more, at most 86400)",
        typed=_NUMBER,
    ),
    "max_invoke_body_bytes": Setting(
        doc=SettingDoc(type="int > 0", default="10 MiB", meaning="decoded invoke body cap"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "max_relay_body_bytes": Setting(
        doc=SettingDoc(type="int > 0", default="1 GiB", meaning="catch-all upload cap"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "max_response_body_bytes": Setting(
        doc=SettingDoc(type="int > 0", default="10 MiB", meaning="buffered invoke response cap"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "max_header_count": Setting(
        doc=SettingDoc(type="int > 0", default="100", meaning="request header count cap"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "max_header_bytes": Setting(
        doc=SettingDoc(type="int > 0", default="64 KiB", meaning="request header size cap"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "connect_timeout": Setting(
        doc=SettingDoc(type="seconds > 0", default="5", meaning="upstream connect timeout"),
        convert=_positive_seconds,
        expected="seconds (more than 0, at most 86400)",
        typed=_NUMBER,
    ),
    "read_timeout": Setting(
        doc=SettingDoc(type="seconds > 0", default="60", meaning="upstream wait for each read"),
        convert=_positive_seconds,
        expected="seconds (more than 0, at most 86400)",
        typed=_NUMBER,
    ),
    "total_timeout": Setting(
        doc=SettingDoc(
            type="seconds > 0, or none", default="300", meaning="the whole exchange; none: no limit"
        ),
        convert=_total_seconds,
        expected="seconds (more than 0, at most 86400), or none for no limit",
        typed=(*_NUMBER, str),
    ),
    "trusted_proxy_hops": Setting(
        doc=SettingDoc(type="int ≥ 0", default="0", meaning="proxies trusted for X-Forwarded-*"),
        convert=_count,
        expected="an integer (0 or more)",
        typed=_INT,
    ),
    "pseudonym": Setting(
        doc=SettingDoc(
            type="RFC 9110 token", default="invoke-middleware", meaning="the gateway's name in Via"
        ),
        convert=_pseudonym,
        expected="an RFC 9110 token such as gateway-1",
    ),
    "problem_json": _flag(
        SettingDoc(type="bool", default="false", meaning="errors as RFC 9457 problem+json")
    ),
    "scope_cookies": _flag(
        SettingDoc(
            type="bool", default="true", meaning="cookies kept to the service's path and team"
        )
    ),
    "sandbox_pages": _flag(
        SettingDoc(type="bool", default="false", meaning="container pages run in their own origin")
    ),
    "mcp_allowed_origins": Setting(
        doc=SettingDoc(
            type="list of origins",
            default="none",
            meaning="pages that may call /r/mcp",
        ),
        convert=_origins,
        expected="origins such as https://app.example",
        typed=(str, list),
    ),
    "mcp_credential_kinds": Setting(
        doc=SettingDoc(
            type="list of sk, dk, jwt",
            default="sk",
            meaning="credentials /r/mcp admits",
        ),
        convert=_credential_kinds,
        expected="credential kinds among sk, dk, jwt",
        typed=(str, list),
    ),
    "ca_bundle": Setting(
        doc=SettingDoc(
            type="PEM file",
            default="system store",
            meaning="CA bundle for external services",
        ),
        convert=_ca_bundle,
        expected="the path of a PEM CA bundle",
        path=True,
    ),
    "jwt.algorithms": Setting(
        doc=SettingDoc(
            type="list",
            default="JWT off",
            meaning="algorithms user tokens may use",
        ),
        convert=_names,
        expected="algorithm names such as RS256, ES256",
        typed=(list,),
        typed_expected='a list of algorithm names such as ["RS256"]',
    ),
    "jwt.secret": Setting(
        doc=SettingDoc(type="text", default="—", meaning="HMAC secret (prefer secret_env)"),
        convert=as_text,
        expected="text",
        secret=True,
    ),
    "jwt.secret_env": Setting(
        doc=SettingDoc(type="env name", default="—", meaning="variable holding the HMAC secret"),
        convert=environment_name,
        expected="an environment variable name",
    ),
    "jwt.secret_file": Setting(
        doc=SettingDoc(type="file", default="—", meaning="file holding the HMAC secret"),
        convert=_readable_file,
        expected="the path of a file holding the secret",
        path=True,
    ),
    "jwt.public_key_file": Setting(
        doc=SettingDoc(type="PEM file", default="—", meaning="the public key"),
        convert=_readable_file,
        expected="the path of a PEM file",
        path=True,
    ),
    "jwt.jwks_url": Setting(
        doc=SettingDoc(type="URL", default="—", meaning="the identity provider's JWKS"),
        convert=_http_url,
        expected="an absolute http(s) URL",
    ),
    "jwt.issuer": Setting(
        doc=SettingDoc(type="text", default="not checked", meaning="required iss"),
        convert=as_text,
        expected="text",
    ),
    "jwt.audience": Setting(
        doc=SettingDoc(type="list", default="not checked", meaning="accepted aud values"),
        convert=_names,
        expected="one or more audience names",
        typed=(str, list),
    ),
    "jwt.leeway": Setting(
        doc=SettingDoc(type="seconds ≥ 0", default="0", meaning="clock skew allowed on exp"),
        convert=_seconds_or_zero,
        expected="seconds (0 or more, at most 86400)",
        typed=_NUMBER,
    ),
    "jwt.cache_size": Setting(
        doc=SettingDoc(type="int ≥ 0", default="0 (off)", meaning="verified-token cache entries"),
        convert=_count,
        expected="an integer (0 or more)",
        typed=_INT,
    ),
    "limits.max_in_flight": Setting(
        doc=SettingDoc(type="int > 0", default="off", meaning="relays in flight in this process"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "limits.team_max_in_flight": Setting(
        doc=SettingDoc(type="int > 0", default="off", meaning="relays in flight per team"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "limits.service_max_in_flight": Setting(
        doc=SettingDoc(type="int > 0", default="off", meaning="relays in flight per service"),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "limits.idle_team_reserve": Setting(
        doc=SettingDoc(
            type="int ≥ 0", default="off", meaning="global slots only idle teams may take"
        ),
        convert=_count,
        expected="an integer (0 or more)",
        typed=_INT,
    ),
    "limits.queue_timeout": Setting(
        doc=SettingDoc(
            type="seconds ≥ 0", default="0", meaning="wait for a global slot before the 429"
        ),
        convert=_seconds_or_zero,
        expected="seconds (0 or more, at most 86400)",
        typed=_NUMBER,
    ),
    "limits.credential_rate": Setting(
        doc=SettingDoc(type="rate", default="off", meaning="requests per window per credential"),
        convert=_rate,
        expected=_RATE,
    ),
    "limits.user_rate": Setting(
        doc=SettingDoc(type="rate", default="off", meaning="requests per window per user"),
        convert=_rate,
        expected=_RATE,
    ),
    "limits.team_rate": Setting(
        doc=SettingDoc(type="rate", default="off", meaning="requests per window per team"),
        convert=_rate,
        expected=_RATE,
    ),
    "limits.service_rate": Setting(
        doc=SettingDoc(type="rate", default="off", meaning="requests per window per service"),
        convert=_rate,
        expected=_RATE,
    ),
    "limits.teams": Setting(
        doc=SettingDoc(type="table", default="none", meaning="per-team rate and max_in_flight"),
        convert=_team_limits,
        expected='a table of team UUIDs, each {rate = "100/minute", max_in_flight = 4}',
        typed=(dict,),
    ),
    "limits.storage_url": Setting(
        doc=SettingDoc(type="URL", default="memory://", meaning="redis://... shares rate budgets"),
        convert=_storage_url,
        expected="memory:// or a redis:// URL",
        secret=True,  # may carry a password
    ),
    "limits.key_prefix": Setting(
        doc=SettingDoc(type="text", default="invoke-limits", meaning="namespace of the Redis keys"),
        convert=as_text,
        expected="text",
    ),
    "limits.storage_timeout": Setting(
        doc=SettingDoc(type="seconds > 0", default="0.5", meaning="bound on each Redis round trip"),
        convert=_positive_seconds,
        expected="seconds (more than 0, at most 86400)",
        typed=_NUMBER,
    ),
    "limits.rate_batch": Setting(
        doc=SettingDoc(
            type="int > 0", default="16", meaning="requests one Redis round trip reserves"
        ),
        convert=positive_int,
        expected="a positive integer",
        typed=_INT,
    ),
    "limits.fail_open": _flag(
        SettingDoc(type="bool", default="true", meaning="serve (true) or 503 when Redis is down")
    ),
}

#: Every setting name, unprefixed (``prefix``, ``jwt.secret``, ...).
SETTING_NAMES: tuple[str, ...] = tuple(SETTINGS)

JWT_KEY_SOURCES = (
    "jwt.secret",
    "jwt.secret_env",
    "jwt.secret_file",
    "jwt.public_key_file",
    "jwt.jwks_url",
)
#: Settings the standalone gateway's file keeps in its ``[store]`` table.
STORE_SETTINGS = ("database_url", "service_cache_ttl")


def convert_setting(key: str, setting: Setting, raw: object) -> Any:
    """``raw`` converted by ``setting``, or a :class:`ConfigError` naming ``key``."""
    try:
        return setting.convert(raw)
    except Refused as exc:
        raise ConfigError(key, str(exc)) from None
    except (ValueError, TypeError):
        raise ConfigError(key, expected_text(setting, raw)) from None


def expected_text(setting: Setting, raw: object, *, typed: bool = False) -> str:
    """What ``setting`` takes, and what it got unless the setting is a secret."""
    expected = (typed and setting.typed_expected) or setting.expected
    shown = "" if setting.secret else f", got {raw!r}"
    return f"expected {expected}{shown}"
