"""Pyramid integration: ``config.include("invoke_middleware.pyramid")``.

The include reads the ``invoke.*`` settings (the app's ini section; see
:mod:`invoke_middleware.config` for the table) and adds a tween at the top of the chain::

    [app:main]
    use = egg:myapp
    invoke.prefix = /api/v1
    invoke.database_url = sqlite:///%(here)s/invoke.db

    def main(global_config, **settings):
        with Configurator(settings=settings) as config:
            config.include("invoke_middleware.pyramid")
            config.set_invoke_collaborators(after_relay=[audit])  # objects, optional
            ...
            return config.make_wsgi_app()

Why a tween: an include cannot wrap the WSGI app that ``make_wsgi_app`` returns, and the tween
placed just under ``INGRESS`` comes first, before Pyramid's request handling: runtime requests
never meet routes, ``NewRequest`` subscribers, views, exception views or other tweens, and every
other request goes on to the next handler as the same request object, untouched. A runtime
request is answered by the WSGI middleware itself, on the same environ; its response keeps the
middleware's streamed body as ``app_iter`` and is written out exactly as produced (a plain
WebOb response would make a relative ``Location`` absolute). Settings are checked by the include
itself, so a bad one fails ``config.include`` and names the key; the middleware is built when
the app is made, and :func:`get_middleware` returns it (``.credentials``, ``.memberships``,
``.registry``).

To wrap the whole Pyramid app instead, use the PasteDeploy filter (:mod:`invoke_middleware.paste`)
or ``InvokeMiddleware(config.make_wsgi_app(), ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Unpack

from pyramid.httpexceptions import HTTPNotFound  # type: ignore[import-untyped]
from pyramid.response import Response  # type: ignore[import-untyped]
from pyramid.tweens import INGRESS  # type: ignore[import-untyped]

from invoke_middleware.config import Collaborators, MiddlewareConfig, parse_settings
from invoke_middleware.middleware import InvokeMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "InvokeTween",
    "RelayedResponse",
    "get_middleware",
    "includeme",
    "invoke_tween_factory",
    "set_invoke_collaborators",
]

_CONFIG_KEY = "invoke_middleware.config"
_COLLABORATORS_KEY = "invoke_middleware.collaborators"
_MIDDLEWARE_KEY = "invoke_middleware.middleware"


def includeme(config: Any) -> None:
    """Read and check the ``invoke.*`` settings; add the tween and the
    ``config.set_invoke_collaborators(...)`` directive.

    Raises :class:`~invoke_middleware.config.ConfigError` naming the bad setting.
    """
    config.registry[_CONFIG_KEY] = parse_settings(config.get_settings())
    config.registry[_COLLABORATORS_KEY] = {}
    config.add_directive("set_invoke_collaborators", set_invoke_collaborators)
    config.add_tween("invoke_middleware.pyramid.invoke_tween_factory", under=INGRESS)


def set_invoke_collaborators(config: Any, **collaborators: Unpack[Collaborators]) -> None:
    """The ``config.set_invoke_collaborators`` directive: objects for the middleware
    (a registry, stores, resolvers, transports, hooks, ...), replacing earlier ones of the
    same name. Call it before ``make_wsgi_app``."""
    config.registry[_COLLABORATORS_KEY].update(collaborators)


def get_middleware(registry: Any) -> InvokeMiddleware:
    """The middleware of a Pyramid app made with the include (``app.registry`` or
    ``request.registry``); :class:`LookupError` before ``make_wsgi_app``."""
    try:
        middleware: InvokeMiddleware = registry[_MIDDLEWARE_KEY]
    except KeyError:
        raise LookupError("invoke_middleware is set up when the app is made") from None
    return middleware


def invoke_tween_factory(handler: Callable[[Any], Any], registry: Any) -> InvokeTween:
    """The tween factory the include registers (Pyramid calls it in ``make_wsgi_app``)."""
    config: MiddlewareConfig = registry[_CONFIG_KEY]
    collaborators: Collaborators = registry[_COLLABORATORS_KEY]
    # The tween gives the middleware runtime paths only, so the app behind it never sees a
    # request; a plain 404 stands there.
    middleware = config.build_middleware(HTTPNotFound(), **collaborators)
    registry[_MIDDLEWARE_KEY] = middleware
    return InvokeTween(handler, middleware)


class InvokeTween:
    """Answers runtime paths with ``middleware``; hands every other request to ``handler``."""

    def __init__(self, handler: Callable[[Any], Any], middleware: InvokeMiddleware) -> None:
        self.handler = handler
        self.middleware = middleware

    def __call__(self, request: Any) -> Any:
        # The same test the middleware makes, on the same environ.
        path: str = request.environ.get("PATH_INFO", "") or "/"
        if self.middleware.router.match(path) is None:
            return self.handler(request)
        # WebOb hands back the middleware's own body iterable: nothing is buffered.
        status, headers, body = request.call_application(self.middleware)
        return RelayedResponse(status=status, headerlist=headers, app_iter=body)


class RelayedResponse(Response):  # type: ignore[misc]
    """A runtime answer: status, headers and streamed body exactly as the middleware made them."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(self.status, self.headerlist)
        app_iter: Iterable[bytes] = self.app_iter
        return app_iter
