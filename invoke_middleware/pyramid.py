"""Pyramid integration: ``config.include("invoke_middleware.pyramid")``.

The include reads the ``invoke.*`` settings (the app's ini section; see
:mod:`invoke_middleware.config` for the table) and answers runtime requests before Pyramid
handles them::

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

Why an execution policy: an include cannot wrap the WSGI app that ``make_wsgi_app`` returns,
and a tween, wherever it is placed, runs under the tweens the host adds later and before
``NewResponse`` subscribers. Pyramid's router hands the bare environ to its execution policy
first, before it makes a request: for a runtime path, :class:`InvokeExecutionPolicy` returns the
WSGI middleware, which the router then calls on the same environ. Runtime requests never meet
Pyramid's request object, routes, subscribers, views, exception views or tweens; their bodies
stream both ways, and their responses are written out exactly as the middleware made them.
Every other environ goes to the execution policy the host set (Pyramid's default otherwise),
untouched, whether the host sets it before or after the include; it must be set in the same
commit, and ``make_wsgi_app`` raises :class:`~pyramid.exceptions.ConfigurationError` when a
later commit replaced the gateway's policy.

Settings are checked by the include itself, so a bad one fails ``config.include`` and names the
key; the middleware is built when the app is made (before the host's ``ApplicationCreated``
subscribers run), and :func:`get_middleware` returns it (``.credentials``, ``.memberships``,
``.registry``).

To wrap the whole Pyramid app instead, use the PasteDeploy filter (:mod:`invoke_middleware.paste`)
or ``InvokeMiddleware(config.make_wsgi_app(), ...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack

from pyramid.exceptions import ConfigurationError  # type: ignore[import-untyped]
from pyramid.httpexceptions import HTTPNotFound  # type: ignore[import-untyped]
from pyramid.interfaces import (  # type: ignore[import-untyped]
    PHASE0_CONFIG,
    PHASE3_CONFIG,
    IApplicationCreated,
    IExecutionPolicy,
)
from pyramid.router import default_execution_policy  # type: ignore[import-untyped]

from invoke_middleware.config import Collaborators, MiddlewareConfig, parse_settings
from invoke_middleware.middleware import InvokeMiddleware

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

    #: Pyramid's ``IExecutionPolicy``: the environ and the router in, a WSGI callable out.
    ExecutionPolicy = Callable[[WSGIEnvironment, Any], WSGIApplication]

__all__ = [
    "InvokeExecutionPolicy",
    "get_middleware",
    "includeme",
    "set_invoke_collaborators",
]

_CONFIG_KEY = "invoke_middleware.config"
_COLLABORATORS_KEY = "invoke_middleware.collaborators"
_MIDDLEWARE_KEY = "invoke_middleware.middleware"

# ``config.set_execution_policy`` (and includes such as pyramid_retry, which call it from a
# PHASE1 action) registers at PHASE3_CONFIG; a later order sees the policy the host ends with,
# whether it was set before or after the include. The discriminator is the gateway's own: one
# on IExecutionPolicy would conflict with the host's policy, or be overridden by it.
_AFTER_HOST_POLICIES = PHASE3_CONFIG + 1
_POLICY_DISCRIMINATOR = "invoke_middleware.pyramid: execution policy"


def includeme(config: Any) -> None:
    """Read and check the ``invoke.*`` settings; install :class:`InvokeExecutionPolicy` and the
    ``config.set_invoke_collaborators(...)`` directive.

    Raises :class:`~invoke_middleware.config.ConfigError` naming the bad setting.
    """
    registry = config.registry
    registry[_CONFIG_KEY] = parse_settings(config.get_settings())
    registry[_COLLABORATORS_KEY] = {}
    config.add_directive("set_invoke_collaborators", set_invoke_collaborators)
    # Subscribers are called in the order they were registered: an early phase puts this one
    # before the host's, so that theirs can call get_middleware.
    config.action(None, _subscribe_to_app_creation, args=(registry,), order=PHASE0_CONFIG)
    config.action(
        _POLICY_DISCRIMINATOR, _wrap_execution_policy, args=(registry,), order=_AFTER_HOST_POLICIES
    )


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


class InvokeExecutionPolicy:
    """Pyramid's execution policy with the gateway in front: a runtime environ is answered by
    the app's middleware before Pyramid makes a request; every other one goes to ``policy``.

    The include installs it around the policy the host set; a host composing policies by hand
    can wrap its own with it.
    """

    def __init__(self, policy: ExecutionPolicy = default_execution_policy) -> None:
        self.policy = policy

    def __call__(self, environ: WSGIEnvironment, router: Any) -> WSGIApplication:
        middleware = get_middleware(router.registry)
        # The same test the middleware makes, on the same environ.
        if middleware.router.match(environ.get("PATH_INFO", "") or "/") is None:
            return self.policy(environ, router)
        # The router calls what a policy returns as a WSGI app on this same environ: the
        # middleware answers it, and its body iterable goes to the server as it is.
        return middleware


def _wrap_execution_policy(registry: Any) -> None:
    policy = registry.queryUtility(IExecutionPolicy, default=default_execution_policy)
    registry.registerUtility(InvokeExecutionPolicy(policy), IExecutionPolicy)


def _subscribe_to_app_creation(registry: Any) -> None:
    registry.registerHandler(_build_middleware, (IApplicationCreated,))


def _build_middleware(event: Any) -> None:
    """Build the app's middleware once Pyramid's router exists (``ApplicationCreated``)."""
    registry = event.app.registry
    if not isinstance(registry.queryUtility(IExecutionPolicy), InvokeExecutionPolicy):
        # The router has already taken the policy it will use: runtime requests would reach
        # Pyramid's request handling, which buffers their bodies.
        raise ConfigurationError(
            "invoke_middleware.pyramid: an execution policy was set in a commit after the"
            " include's; set it before config.include('invoke_middleware.pyramid') or in the"
            " same commit, and the gateway's policy wraps it"
        )
    config: MiddlewareConfig = registry[_CONFIG_KEY]
    collaborators: Collaborators = registry[_COLLABORATORS_KEY]
    if registry.get(_MIDDLEWARE_KEY) is not None:
        # A second app made from the same configuration shares its registry, and so the
        # middleware (its pools, limiter and stores): one is built per registry, never two.
        return
    # The policy gives the middleware runtime paths only, so the app behind it never sees a
    # request; a plain 404 stands there.
    registry[_MIDDLEWARE_KEY] = config.build_middleware(HTTPNotFound(), **collaborators)
