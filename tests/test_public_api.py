"""The curated public namespace: ``__all__`` lists exactly what ``invoke_middleware`` exports."""

from __future__ import annotations

import inspect

import invoke_middleware


def test_all_has_no_duplicates() -> None:
    # Its order (constants, classes, functions, each sorted) is kept by ruff's RUF022.
    assert len(invoke_middleware.__all__) == len(set(invoke_middleware.__all__))


def test_every_exported_name_exists() -> None:
    for name in invoke_middleware.__all__:
        assert hasattr(invoke_middleware, name), name


def test_every_public_attribute_is_exported() -> None:
    public = {
        name
        for name, value in vars(invoke_middleware).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(invoke_middleware.__all__)


def test_every_exported_class_and_function_is_documented() -> None:
    for name in invoke_middleware.__all__:
        value = getattr(invoke_middleware, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
