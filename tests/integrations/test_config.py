"""Settings: conversion of ini strings and Flask values, and start-up errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import certifi
import pytest

from invoke_middleware import InMemoryServiceRegistry, PipelineSettings
from invoke_middleware.auth.credentials import CredentialResolver
from invoke_middleware.auth.jwt import JWTResolver
from invoke_middleware.config import (
    SETTING_NAMES,
    ConfigError,
    KeyStyle,
    MiddlewareConfig,
    parse_flask_config,
    parse_settings,
)
from invoke_middleware.store import SQLServiceRegistry, SQLStore
from invoke_middleware.testing import MockTransport, generate_keypair, make_response
from invoke_middleware.transport.base import Timeouts
from invoke_middleware.transport.http import HTTPTransport

SECRET = "a-shared-secret-long-enough-for-hs384-and-hs512-too-0123456789"


def host(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"host"]


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, str]:
    pair = generate_keypair("RS256")
    public = tmp_path / "public.pem"
    public.write_bytes(pair.public_pem)
    private = tmp_path / "private.pem"
    private.write_bytes(pair.private_pem)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    secret = tmp_path / "jwt.secret"
    secret.write_text(SECRET + "\n")
    return {
        "public": str(public),
        "private": str(private),
        "not_pem": str(not_pem),
        "secret": str(secret),
    }


# --- conversion ------------------------------------------------------------------------------


def test_no_settings_give_the_defaults() -> None:
    config = parse_settings({"pyramid.reload_templates": "true"})

    assert config == MiddlewareConfig()
    assert config.settings == PipelineSettings()


def test_ini_strings_are_converted_to_typed_settings() -> None:
    config = parse_settings(
        {
            "invoke.prefix": " /api/v1/ ",
            "invoke.database_url": "sqlite:///invoke.db",
            "invoke.service_cache_ttl": "0.5",
            "invoke.max_invoke_body_bytes": "1_000",
            "invoke.max_relay_body_bytes": "2000",
            "invoke.max_response_body_bytes": "3000",
            "invoke.max_header_count": "40",
            "invoke.max_header_bytes": "8192",
            "invoke.connect_timeout": "1.5",
            "invoke.read_timeout": "20",
            "invoke.total_timeout": "none",
            "invoke.trusted_proxy_hops": "0",
            "invoke.pseudonym": "edge-1",
            "invoke.problem_json": "On",
            "invoke.scope_cookies": "off",
            "invoke.sandbox_pages": "yes",
            "invoke.ca_bundle": certifi.where(),
        }
    )

    assert config.prefix == "/api/v1"
    assert config.database_url == "sqlite:///invoke.db"
    assert config.service_cache_ttl == 0.5
    assert config.ca_bundle == certifi.where()
    assert config.settings == PipelineSettings(
        max_invoke_body_bytes=1000,
        max_relay_body_bytes=2000,
        max_response_body_bytes=3000,
        max_header_count=40,
        max_header_bytes=8192,
        timeouts=Timeouts(connect=1.5, read=20.0, total=None),
        trusted_proxy_hops=0,
        pseudonym="edge-1",
        problem_json=True,
        scope_cookies=False,
        sandbox_pages=True,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(text, text.lower() in ("true", "yes", "on", "1"), id=text)
        for text in ("true", "false", "yes", "no", "on", "off", "1", "0", "TRUE", "Off")
    ],
)
def test_booleans_accept_the_usual_spellings(text: str, expected: bool) -> None:
    assert parse_settings({"invoke.problem_json": text}).settings.problem_json is expected


def test_blank_values_leave_the_default() -> None:
    config = parse_settings({"invoke.prefix": "", "invoke.read_timeout": "  "})

    assert config == MiddlewareConfig()


def test_flask_keys_are_the_upper_case_names_and_take_native_values() -> None:
    config = parse_flask_config(
        {
            "SECRET_KEY": "flask's own",
            "INVOKE_MAX_HEADER_COUNT": 12,
            "INVOKE_READ_TIMEOUT": 2,
            "INVOKE_PROBLEM_JSON": False,
            "INVOKE_JWT_ALGORITHMS": ["HS256", "HS384"],
            "INVOKE_JWT_SECRET": SECRET,
            "INVOKE_JWT_AUDIENCE": "gateway",
            "INVOKE_DATABASE_URL": None,
        }
    )

    assert config.style is KeyStyle.FLASK
    assert config.settings.max_header_count == 12
    assert config.settings.timeouts.read == 2.0
    assert config.settings.problem_json is False
    assert config.database_url is None
    assert config.jwt is not None
    assert config.jwt.algorithms == ("HS256", "HS384")
    assert config.jwt.audience == ("gateway",)


def test_every_setting_has_an_ini_and_a_flask_spelling() -> None:
    assert KeyStyle.INI.key("jwt.secret_env") == "invoke.jwt.secret_env"
    assert KeyStyle.FLASK.key("jwt.secret_env") == "INVOKE_JWT_SECRET_ENV"
    flask_keys = {KeyStyle.FLASK.key(name) for name in SETTING_NAMES}
    assert len(flask_keys) == len(SETTING_NAMES)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("secret", id="secret"),
        pytest.param("secret_env", id="secret-from-environment"),
        pytest.param("secret_file", id="secret-file"),
        pytest.param("public_key_file", id="public-key-file"),
        pytest.param("jwks_url", id="jwks"),
    ],
)
def test_each_jwt_key_source_configures_a_resolver(
    source: str, key_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_SECRET", SECRET)
    settings = {
        "secret": {"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": SECRET},
        "secret_env": {
            "invoke.jwt.algorithms": "HS256",
            "invoke.jwt.secret_env": "GATEWAY_JWT_SECRET",
        },
        "secret_file": {
            "invoke.jwt.algorithms": "HS256",
            "invoke.jwt.secret_file": key_files["secret"],
        },
        "public_key_file": {
            "invoke.jwt.algorithms": "RS256, PS256",
            "invoke.jwt.public_key_file": key_files["public"],
        },
        "jwks_url": {
            "invoke.jwt.algorithms": "RS256 ES256",
            "invoke.jwt.jwks_url": "https://idp.example/.well-known/jwks.json",
        },
    }[source]

    config = parse_settings(
        {**settings, "invoke.jwt.issuer": "https://idp.example", "invoke.jwt.leeway": "5"}
    )

    assert config.jwt is not None
    assert config.jwt.key_setting == f"jwt.{source}"
    if source == "secret_file":
        assert config.jwt.key == SECRET.encode()  # without the file's trailing newline
    assert config.jwt.issuer == "https://idp.example"
    assert config.jwt.leeway == 5.0
    middleware = config.build_middleware(host)
    try:
        kinds = [type(resolver) for resolver in middleware.pipeline.resolvers]
        assert kinds == [CredentialResolver, JWTResolver]
    finally:
        middleware.close()


def test_secrets_stay_out_of_the_config_repr() -> None:
    config = parse_settings(
        {
            "invoke.database_url": "postgresql://gateway:hunter2-db@db.internal/invoke",
            "invoke.jwt.algorithms": "HS256",
            "invoke.jwt.secret": SECRET,
        }
    )

    assert "hunter2-db" not in repr(config)
    assert SECRET not in repr(config)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        pytest.param({"invoke.prefix": "api"}, "invoke.prefix", "a path starting with '/'",
                     id="prefix-relative"),
        pytest.param({"invoke.prefix": "/a b"}, "invoke.prefix", "a path", id="prefix-space"),
        pytest.param({"invoke.prefix": "/a?b"}, "invoke.prefix", "a path", id="prefix-query"),
        pytest.param({"invoke.prefix": "/caf\xe9"}, "invoke.prefix", "ASCII path characters",
                     id="prefix-non-ascii"),
        pytest.param({"invoke.prefix": "/caf%C3%A9"}, "invoke.prefix", "no escapes",
                     id="prefix-escape"),
        pytest.param({"invoke.database_url": "not a url"}, "invoke.database_url",
                     "SQLAlchemy URL", id="database-url-malformed"),
        pytest.param({"invoke.database_url": "mysql://db/x"}, "invoke.database_url",
                     "only sqlite", id="database-url-unsupported"),
        pytest.param({"invoke.service_cache_ttl": "5"}, "invoke.service_cache_ttl",
                     "applies only with invoke.database_url", id="ttl-without-database"),
        pytest.param({"invoke.database_url": "sqlite://", "invoke.service_cache_ttl": "-1"},
                     "invoke.service_cache_ttl", "0 or more", id="ttl-negative"),
        pytest.param({"invoke.max_invoke_body_bytes": "0"}, "invoke.max_invoke_body_bytes",
                     "positive integer", id="int-zero"),
        pytest.param({"invoke.max_relay_body_bytes": "-5"}, "invoke.max_relay_body_bytes",
                     "positive integer", id="int-negative"),
        pytest.param({"invoke.max_response_body_bytes": "10MB"},
                     "invoke.max_response_body_bytes", "positive integer", id="int-with-unit"),
        pytest.param({"invoke.max_header_count": "1.5"}, "invoke.max_header_count",
                     "positive integer", id="int-fraction"),
        pytest.param({"invoke.max_header_bytes": "lots"}, "invoke.max_header_bytes",
                     "positive integer", id="int-word"),
        pytest.param({"invoke.connect_timeout": "0"}, "invoke.connect_timeout",
                     "more than 0", id="timeout-zero"),
        pytest.param({"invoke.read_timeout": "nan"}, "invoke.read_timeout",
                     "seconds", id="timeout-nan"),
        pytest.param({"invoke.read_timeout": "none"}, "invoke.read_timeout",
                     "seconds", id="read-timeout-none"),
        pytest.param({"invoke.total_timeout": "inf"}, "invoke.total_timeout",
                     "or none for no limit", id="timeout-infinite"),
        # Beyond a day: select.poll and threading's waits overflow on huge values, which
        # would surface as a 500 on the first request that waits.
        pytest.param({"invoke.connect_timeout": "1e12"}, "invoke.connect_timeout",
                     "at most 86400", id="timeout-huge"),
        pytest.param({"invoke.total_timeout": "86400.5"}, "invoke.total_timeout",
                     "at most 86400", id="total-timeout-over-a-day"),
        pytest.param({"invoke.limits.queue_timeout": "1e300"}, "invoke.limits.queue_timeout",
                     "at most 86400", id="queue-timeout-huge"),
        pytest.param({"invoke.jwt.leeway": "1e20"}, "invoke.jwt.leeway",
                     "at most 86400", id="leeway-huge"),
        pytest.param({"invoke.trusted_proxy_hops": "-1"}, "invoke.trusted_proxy_hops",
                     "0 or more", id="hops-negative"),
        pytest.param({"invoke.pseudonym": "my gateway"}, "invoke.pseudonym",
                     "RFC 9110 token", id="pseudonym-space"),
        pytest.param({"invoke.problem_json": "maybe"}, "invoke.problem_json",
                     "boolean", id="bool-word"),
        pytest.param({"invoke.ca_bundle": "/nonexistent/ca.pem"}, "invoke.ca_bundle",
                     "cannot read the file", id="ca-bundle-missing"),
        pytest.param({"invoke.jwt.algorithms": "none", "invoke.jwt.secret": SECRET},
                     "invoke.jwt.algorithms", "refused algorithm 'none'", id="alg-none"),
        pytest.param({"invoke.jwt.algorithms": "HS999", "invoke.jwt.secret": SECRET},
                     "invoke.jwt.algorithms", "unknown or refused", id="alg-unknown"),
        pytest.param({"invoke.jwt.algorithms": ",", "invoke.jwt.secret": SECRET},
                     "invoke.jwt.algorithms", "algorithm names", id="alg-empty-list"),
        pytest.param({"invoke.jwt.secret": SECRET}, "invoke.jwt.algorithms",
                     "required with invoke.jwt.secret", id="jwt-key-without-algorithms"),
        pytest.param({"invoke.jwt.issuer": "https://idp"}, "invoke.jwt.algorithms",
                     "required", id="jwt-claim-without-algorithms"),
        pytest.param({"invoke.jwt.algorithms": "RS256"}, "invoke.jwt.secret",
                     "set exactly one of", id="jwt-no-key"),
        pytest.param({"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": SECRET,
                      "invoke.jwt.jwks_url": "https://idp/jwks"},
                     "invoke.jwt.jwks_url", "set only one of", id="jwt-two-keys"),
        pytest.param({"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": "short"},
                     "invoke.jwt.secret", "minimum recommended length", id="jwt-secret-too-short"),
        pytest.param({"invoke.jwt.algorithms": "HS256",
                      "invoke.jwt.secret_env": "INVOKE_TEST_UNSET_VARIABLE"},
                     "invoke.jwt.secret_env", "'INVOKE_TEST_UNSET_VARIABLE' is not set",
                     id="jwt-secret-env-unset"),
        pytest.param({"invoke.jwt.algorithms": "HS256",
                      "invoke.jwt.secret_file": "/nonexistent/jwt.secret"},
                     "invoke.jwt.secret_file", "cannot read", id="jwt-secret-file-missing"),
        pytest.param({"invoke.jwt.algorithms": "RS256",
                      "invoke.jwt.public_key_file": "/nonexistent/key.pem"},
                     "invoke.jwt.public_key_file", "cannot read", id="jwt-key-file-missing"),
        pytest.param({"invoke.jwt.algorithms": "RS256",
                      "invoke.jwt.jwks_url": "ftp://idp/jwks"},
                     "invoke.jwt.jwks_url", "http(s) URL", id="jwks-not-http"),
        pytest.param({"invoke.jwt.algorithms": "HS256",
                      "invoke.jwt.jwks_url": "https://idp/jwks"},
                     "invoke.jwt.algorithms", "HMAC", id="jwks-with-hmac"),
        pytest.param({"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": SECRET,
                      "invoke.jwt.leeway": "-1"},
                     "invoke.jwt.leeway", "0 or more", id="leeway-negative"),
        pytest.param({"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": SECRET,
                      "invoke.jwt.cache_size": "many"},
                     "invoke.jwt.cache_size", "an integer", id="cache-size-word"),
        pytest.param({"invoke.max_relay_bytes": "5"}, "invoke.max_relay_bytes",
                     "did you mean invoke.max_relay_body_bytes?", id="unknown-with-hint"),
        pytest.param({"invoke.colour": "blue"}, "invoke.colour", "unknown setting",
                     id="unknown"),
    ],
)  # fmt: skip
def test_bad_setting_is_refused_naming_the_key(
    settings: dict[str, str], key: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INVOKE_TEST_UNSET_VARIABLE", raising=False)

    with pytest.raises(ConfigError) as caught:
        parse_settings(settings)

    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("name", "file", "message"),
    [
        pytest.param("invoke.ca_bundle", "not_pem", "no usable PEM", id="ca-bundle-not-pem"),
        pytest.param("invoke.jwt.public_key_file", "private", "public key, not the private",
                     id="jwt-private-key"),
        pytest.param("invoke.jwt.public_key_file", "not_pem", "does not suit RS256",
                     id="jwt-key-file-not-pem"),
    ],
)  # fmt: skip
def test_bad_file_is_refused_naming_the_key(
    name: str, file: str, message: str, key_files: dict[str, str]
) -> None:
    settings = {name: key_files[file]}
    if name.startswith("invoke.jwt."):
        settings["invoke.jwt.algorithms"] = "RS256"

    with pytest.raises(ConfigError, match=message) as caught:
        parse_settings(settings)

    assert caught.value.key == name


def test_public_key_next_to_an_hmac_algorithm_is_refused(key_files: dict[str, str]) -> None:
    # Key confusion (RFC 8725 §2.1): the public key must never serve as an HMAC secret.
    with pytest.raises(ConfigError, match="does not suit HS256") as caught:
        parse_settings(
            {
                "invoke.jwt.algorithms": "RS256 HS256",
                "invoke.jwt.public_key_file": key_files["public"],
            }
        )

    assert caught.value.key == "invoke.jwt.public_key_file"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param("INVOKE_MAX_HEADER_COUNT", True, "positive integer", id="bool-for-int"),
        pytest.param("INVOKE_MAX_HEADER_COUNT", 10.0, "positive integer", id="float-for-int"),
        pytest.param("INVOKE_READ_TIMEOUT", False, "seconds", id="bool-for-seconds"),
        pytest.param("INVOKE_PROBLEM_JSON", 1, "boolean", id="int-for-bool"),
        pytest.param("INVOKE_PREFIX", 5, "a path", id="int-for-path"),
        pytest.param("INVOKE_JWT_AUDIENCE", {"a": 1}, "audience names", id="dict-for-list"),
    ],
)
def test_wrong_flask_value_type_is_refused_naming_the_key(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        parse_flask_config({key: value})

    assert caught.value.key == key


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(
            {"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": "short-s3cr3t"},
            id="weak-jwt-secret",
        ),
        pytest.param(
            {"invoke.database_url": "postgresql://gateway:s3cr3t@db:port/invoke"},
            id="malformed-database-url",
        ),
    ],
)
def test_secret_values_never_appear_in_messages(settings: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(settings)

    assert "s3cr3t" not in str(caught.value)


# --- building --------------------------------------------------------------------------------


def test_database_url_makes_the_sql_store_the_default_collaborators(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'invoke.db'}"
    SQLStore(url).init()
    config = parse_settings({"invoke.database_url": url})
    registry = InMemoryServiceRegistry()

    from_store = config.build_middleware(host)
    mixed = config.build_middleware(host, registry=registry)
    try:
        assert isinstance(from_store.registry, SQLServiceRegistry)
        assert mixed.registry is registry
        assert type(mixed.credentials).__name__ == "SQLCredentialStore"
    finally:
        from_store.close()
        mixed.close()


def test_ca_bundle_configures_a_separate_egress_transport() -> None:
    middleware = parse_settings({"invoke.ca_bundle": certifi.where()}).build_middleware(host)
    try:
        assert isinstance(middleware.pipeline.egress_transport, HTTPTransport)
        assert middleware.pipeline.egress_transport is not middleware.pipeline.transport
    finally:
        middleware.close()


@pytest.mark.parametrize(
    ("settings", "collaborator", "key"),
    [
        pytest.param({"invoke.jwt.algorithms": "HS256", "invoke.jwt.secret": SECRET},
                     "resolvers", "invoke.jwt.algorithms", id="jwt-and-resolvers"),
        pytest.param({"invoke.ca_bundle": certifi.where()}, "egress_transport",
                     "invoke.ca_bundle", id="ca-bundle-and-egress-transport"),
    ],
)  # fmt: skip
def test_settings_that_an_explicit_collaborator_would_silence_are_refused(
    settings: dict[str, str], collaborator: str, key: str
) -> None:
    config = parse_settings(settings)
    objects: dict[str, Any] = {
        "resolvers": [],
        "egress_transport": MockTransport(lambda request: make_response(200)),
    }

    with pytest.raises(ConfigError) as caught:
        config.build_middleware(host, **{collaborator: objects[collaborator]})

    assert caught.value.key == key


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("postgresql+nodriver://gateway:s3cr3t@db/invoke", "unknown database driver",
                     id="unknown-driver"),
        pytest.param("sqlite+pysqlcipher://:s3cr3t@/invoke.db", "driver is missing (pysqlcipher3)",
                     id="driver-not-installed"),
    ],
)  # fmt: skip
def test_database_that_cannot_be_opened_fails_the_build_naming_the_key(
    url: str, message: str
) -> None:
    config = parse_settings({"invoke.database_url": url})

    with pytest.raises(ConfigError) as caught:
        config.build_middleware(host)

    assert caught.value.key == "invoke.database_url"
    assert message in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_a_sqlite_file_that_does_not_exist_fails_the_build_naming_the_key(
    tmp_path: Path,
) -> None:
    # A typo in the path: SQLite would make an empty file, and every request would be a 500.
    SQLStore(f"sqlite:///{tmp_path / 'gateway.sqlite3'}").init()
    missing = tmp_path / "gatewy.sqlite3"
    config = parse_settings({"invoke.database_url": f"sqlite:///{missing}"})

    with pytest.raises(ConfigError) as caught:
        config.build_middleware(host)

    assert caught.value.key == "invoke.database_url"
    assert f"no database file at {missing}" in str(caught.value)
    assert not missing.exists()
