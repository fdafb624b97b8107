"""The shared test toolkit: one of each piece of test infrastructure.

- :mod:`tests.toolkit.servers`: run any server from a thread for a ``with`` block
  (:func:`~tests.toolkit.servers.serving`), a WSGI app on werkzeug's or wsgiref's server.
- :mod:`tests.toolkit.upstream`: the recording upstream, a loopback HTTP server that records
  what reached it and echoes it back in one JSON shape; :func:`~tests.toolkit.upstream.
  repeating_bytes` is the body every download path sends.
- :mod:`tests.toolkit.world`: the world builder, a Flask host wrapped by the middleware with
  its registry, stores and keys for a team, in front of the recording upstream.
- :mod:`tests.toolkit.errors`: :func:`~tests.toolkit.errors.assert_gateway_error`, the shape
  of every error the gateway produces itself.

Tests that are not about sockets use ``invoke_middleware.testing.MockTransport`` and
``RecordingTransport`` instead of a server.
"""
