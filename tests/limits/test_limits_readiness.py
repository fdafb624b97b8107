"""``/readyz`` of the standalone gateway asks the rate-limit store when budgets are shared
through Redis: a load balancer learns that limits cannot be counted."""

from __future__ import annotations

import socket
from pathlib import Path

from invoke_middleware._toml_config import load_config, starter_config
from invoke_middleware.standalone import build_standalone_app
from invoke_middleware.store.sql import SQLStore
from tests.limits.conftest import RedisNamespace


def _gateway_file(tmp_path: Path, limits: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(starter_config().replace("[limits]\n", "[limits]\n" + limits, 1))
    store = SQLStore(f"sqlite:///{tmp_path / 'invoke-middleware.sqlite3'}")
    store.init()
    store.close()
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_readiness_asks_redis_when_rates_are_counted_there(
    tmp_path: Path, redis_namespace: RedisNamespace
) -> None:
    limits = (
        f'storage_url = "{redis_namespace.url}"\nkey_prefix = "{redis_namespace.prefix}"\n'
        'team_rate = "100/minute"\n'
    )
    gateway = build_standalone_app(load_config(_gateway_file(tmp_path, limits)))
    try:
        assert gateway.ready().as_json() == {
            "status": "ready",
            "probes": {"store": "ok", "rate_limits": "ok"},
        }
    finally:
        gateway.close()


def test_readiness_names_the_rate_limit_store_when_redis_is_away(tmp_path: Path) -> None:
    limits = (
        f'storage_url = "redis://127.0.0.1:{_closed_port()}/0"\nstorage_timeout = 0.5\n'
        'team_rate = "100/minute"\n'
    )
    gateway = build_standalone_app(load_config(_gateway_file(tmp_path, limits)))
    try:
        readiness = gateway.ready()
        assert not readiness.ready
        probes = readiness.as_json()["probes"]
        assert isinstance(probes, dict)
        assert probes["store"] == "ok"
        assert probes["rate_limits"] != "ok"
    finally:
        gateway.close()


def test_rates_counted_in_memory_add_no_probe(tmp_path: Path) -> None:
    gateway = build_standalone_app(
        load_config(_gateway_file(tmp_path, 'team_rate = "100/minute"\n'))
    )
    try:
        assert gateway.ready().as_json() == {"status": "ready", "probes": {"store": "ok"}}
    finally:
        gateway.close()
