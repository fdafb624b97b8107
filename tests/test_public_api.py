"""The curated public namespace: ``__all__`` lists exactly what ``invoke_middleware`` exports:
what a host needs, and what a custom transport, resolver or registry needs to be written."""

from __future__ import annotations

import inspect

import pytest

import invoke_middleware
from invoke_middleware import errors, pipeline


def public_names() -> set[str]:
    """Every public attribute the package offers, loaded or not yet, submodules aside."""
    return {
        name
        for name in dir(invoke_middleware)
        if not name.startswith("_") and not inspect.ismodule(getattr(invoke_middleware, name))
    }


def test_all_has_no_duplicates() -> None:
    # Its order (constants, classes, functions, each sorted) is kept by ruff's RUF022.
    assert len(invoke_middleware.__all__) == len(set(invoke_middleware.__all__))


def test_every_exported_name_exists() -> None:
    for name in invoke_middleware.__all__:
        assert hasattr(invoke_middleware, name), name


def test_every_public_attribute_is_exported() -> None:
    assert public_names() == set(invoke_middleware.__all__)


def test_every_exported_class_and_function_is_documented() -> None:
    for name in invoke_middleware.__all__:
        value = getattr(invoke_middleware, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


@pytest.mark.parametrize(
    "name",
    [
        "GatewayError",
        "UpstreamError",
        "UpstreamUnreachableError",
        "UpstreamTimeoutError",
        "StoreUnavailableError",
    ],
)
def test_the_errors_the_transport_and_store_contracts_raise_are_exported(name: str) -> None:
    assert name in invoke_middleware.__all__
    assert getattr(invoke_middleware, name) is getattr(errors, name)


@pytest.mark.parametrize("name", ["Pipeline", "PipelineResponse"])
def test_pipeline_internals_are_not_exported(name: str) -> None:
    assert name not in invoke_middleware.__all__
    assert name not in dir(invoke_middleware)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("Gateway", pipeline.Pipeline, id="Gateway"),
        pytest.param("GatewayRequest", invoke_middleware.PipelineRequest, id="GatewayRequest"),
        pytest.param("GatewayResponse", pipeline.PipelineResponse, id="GatewayResponse"),
        pytest.param("GatewaySettings", invoke_middleware.PipelineSettings, id="GatewaySettings"),
        pytest.param("Pipeline", pipeline.Pipeline, id="Pipeline"),
        pytest.param("PipelineResponse", pipeline.PipelineResponse, id="PipelineResponse"),
    ],
)
def test_a_deprecated_name_warns_and_resolves_to_its_replacement(old: str, new: object) -> None:
    with pytest.warns(
        DeprecationWarning, match=rf"invoke_middleware\.{old} is deprecated"
    ) as caught:
        resolved = getattr(invoke_middleware, old)

    assert resolved is new
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert old not in dir(invoke_middleware)
