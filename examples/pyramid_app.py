"""Pyramid: ``config.include("invoke_middleware.pyramid")``, or the PasteDeploy filter.

``main`` includes the gateway, which reads the ``invoke.*`` settings of its app section;
``host_app`` is the same host without it, for the ``[filter:invoke]`` pipeline in
``pyramid.ini``. Create the store's tables once, then serve either::

    python -c "from invoke_middleware.store import SQLStore; SQLStore('sqlite:///examples/invoke.db').init()"
    PYTHONPATH=examples pserve examples/pyramid.ini                       # filter pipeline
    PYTHONPATH=examples pserve examples/pyramid.ini --app-name included   # the include
"""

from __future__ import annotations

import logging
from typing import Any

from pyramid.config import Configurator
from pyramid.response import Response

from invoke_middleware.hooks import RelayFinished

logger = logging.getLogger("example.gateway")


def log_relay(event: RelayFinished) -> None:
    """An after-relay hook: one line per relay, never a body or a key."""
    started = event.started
    logger.info(
        "%s %s %s -> %d", started.request_id, started.service.slug, started.path, event.status
    )


def home(request: Any) -> Response:
    return Response("Hello from the Pyramid host\n", content_type="text/plain")


def add_host_routes(config: Configurator) -> None:
    config.add_route("home", "/")
    config.add_view(home, route_name="home")


def main(global_config: dict[str, str], **settings: str) -> Any:
    """The host with the gateway included (settings: ``invoke.*`` in the app section)."""
    with Configurator(settings=settings) as config:
        config.include("invoke_middleware.pyramid")
        config.set_invoke_collaborators(after_relay=[log_relay])
        add_host_routes(config)
        return config.make_wsgi_app()


def host_app(global_config: dict[str, str], **settings: str) -> Any:
    """The host alone; ``[filter:invoke]`` in a pipeline adds the gateway."""
    with Configurator(settings=settings) as config:
        add_host_routes(config)
        return config.make_wsgi_app()
