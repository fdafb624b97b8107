"""Names a package exports without importing them up front (PEP 562 module ``__getattr__``).

A package lists such a name in ``__all__``, imports it under ``TYPE_CHECKING`` for type
checkers, and maps it here to where it lives; the module holding it (and whatever that module
imports: requests, PyJWT with cryptography) is imported the first time the name is read.
Deprecated names resolve the same way, with a :class:`DeprecationWarning` on each read.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping


def lazy_attributes(
    package: str,
    lazy: Mapping[str, str],
    *,
    deprecated: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    ``lazy`` maps a name to the module it is imported from; ``deprecated`` maps an old name
    to ``(module, new name)``. ``dir()`` lists the lazy names beside the loaded ones but not
    the deprecated ones, like ``__all__``.
    """
    old_names = deprecated or {}

    def __getattr__(name: str) -> object:
        if name in old_names:
            module, new_name = old_names[name]
            warnings.warn(
                f"{package}.{name} is deprecated; use {module}.{new_name}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(module), new_name)
        if name not in lazy:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(lazy[name]), name)
        # Kept in the package: later reads find it without calling this again.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *lazy})

    return __getattr__, __dir__
