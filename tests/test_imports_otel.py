"""Tracing is optional: ``import invoke_middleware`` loads no OpenTelemetry package; the
tracing module loads only the API, never the SDK (the host chooses and configures one)."""

from __future__ import annotations

from tests.test_imports import loaded_after


def test_a_bare_import_does_not_load_opentelemetry() -> None:
    loaded = loaded_after("import invoke_middleware")
    assert "invoke_middleware.middleware" in loaded  # the import did run
    assert not {name for name in loaded if name.startswith("opentelemetry")}


def test_the_tracing_module_loads_the_api_and_not_the_sdk() -> None:
    loaded = loaded_after("import invoke_middleware.otel")
    assert "opentelemetry.trace" in loaded
    assert not {name for name in loaded if name.startswith("opentelemetry.sdk")}
