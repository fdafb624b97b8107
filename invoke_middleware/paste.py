"""PasteDeploy integration: the ``invoke`` filter (entry point ``paste.filter_app_factory``).

Any Paste-deployed app (Pyramid's included) gets the gateway from a ``[filter:invoke]``
section and a pipeline::

    [pipeline:main]
    pipeline = invoke myapp

    [filter:invoke]
    use = egg:invoke_middleware#invoke
    invoke.prefix = /api/v1
    invoke.database_url = sqlite:///%(here)s/invoke.db
    invoke.jwt.algorithms = RS256
    invoke.jwt.jwks_url = https://idp.example/.well-known/jwks.json

The section's settings are the ones of :mod:`invoke_middleware.config`, spelled as in the
Pyramid app section (``invoke.<name>``), so a line can move between the two unchanged. Every
key in the section must be one of them. Values arrive as strings; a bad one stops the app from
loading with a :class:`~invoke_middleware.config.ConfigError` that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke_middleware.config import SETTING_NAMES, ConfigError, KeyStyle, parse_settings
from invoke_middleware.middleware import InvokeMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["filter_app_factory"]


def filter_app_factory(
    app: WSGIApplication, global_conf: dict[str, str], **local_conf: str
) -> InvokeMiddleware:
    """Wrap ``app`` with the middleware configured by the ``[filter:...]`` section.

    ``global_conf`` (the ``[DEFAULT]`` section and the loader's variables) is not read.
    """
    namespace = KeyStyle.INI.key("")
    for key in local_conf:
        if not key.startswith(namespace):
            hint = f"; write it as {namespace}{key}" if key in SETTING_NAMES else ""
            raise ConfigError(key, f"unknown setting{hint}")
    return parse_settings(local_conf).build_middleware(app)
