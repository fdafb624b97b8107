"""The MCP endpoint, ``POST {prefix}/r/mcp``: agents list, read and call container services.

:class:`~invoke_middleware.mcp.endpoint.MCPEndpoint` speaks MCP's Streamable HTTP transport,
statelessly, in both protocol eras (:mod:`invoke_middleware.mcp.protocol`), and answers its
three tools (:mod:`invoke_middleware.mcp.tools`) by running the gateway's own pipeline. The
README's "MCP endpoint" section lists the decisions the specification leaves open.
"""
