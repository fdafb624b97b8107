"""invoke_middleware."""
