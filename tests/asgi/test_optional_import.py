"""The ``asgi`` extra loads only when used."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_loads_neither_a2wsgi_nor_the_asgi_module() -> None:
    code = (
        "import sys, invoke_middleware, invoke_middleware.middleware; "
        "print([m for m in sys.modules if m.startswith(('a2wsgi', 'invoke_middleware.asgi'))])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
