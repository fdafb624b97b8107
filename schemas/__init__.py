"""The gateway's JSON Schemas and OpenAPI document, installed as ``invoke_middleware.schemas``."""
