"""JSON-RPC 2.0 framing and MCP's two protocol eras, as the MCP endpoint speaks them.

The endpoint answers both eras on one URL (see the README, "MCP endpoint"):

* the **handshake era** (revisions 2024-11-05 to 2025-11-25): ``initialize`` negotiates a
  version, later requests name it in the ``MCP-Protocol-Version`` header (absent: 2025-03-26);
* the **stateless era** (revision 2026-07-28): every request carries its version and client
  capabilities in ``params._meta`` and mirrors ``method``/``params.name`` into the
  ``Mcp-Method``/``Mcp-Name`` headers; results carry ``resultType``.

:func:`classify` reads one JSON-RPC message; :func:`era_of` decides which era answers a request;
:func:`check_stateless_request` applies the 2026-07-28 metadata and header checks. Every
refusal is a :class:`JSONRPCError`; :func:`http_status` gives the HTTP status each era
prescribes for it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from invoke_middleware.errors import GatewayError
from invoke_middleware.headers import Headers

#: Handshake-era revisions, oldest first; ``initialize`` answers the last one when it does not
#: speak the client's.
HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
#: Stateless revisions.
STATELESS_VERSIONS: Final = ("2026-07-28",)
SUPPORTED_VERSIONS: Final = (*HANDSHAKE_VERSIONS, *STATELESS_VERSIONS)
#: What a handshake-era request without ``MCP-Protocol-Version`` speaks (2025-06-18 and later,
#: "Protocol Version Header").
DEFAULT_HEADERLESS_VERSION: Final = "2025-03-26"

VERSION_HEADER: Final = "MCP-Protocol-Version"
METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"

META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"

# JSON-RPC 2.0 and MCP error codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
HEADER_MISMATCH: Final = -32020
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022

#: Methods whose ``params.name`` (or ``params.uri``) the 2026-07-28 client mirrors into
#: ``Mcp-Name``.
_NAMED_METHODS: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

# Base64 sentinel of mirrored header values (2026-07-28, "Value Encoding").
_SENTINEL_PREFIX: Final = "=?base64?"
_SENTINEL_SUFFIX: Final = "?="


class Era(Enum):
    """Which generation of the protocol answers a request."""

    HANDSHAKE = "handshake"
    STATELESS = "stateless"


class JSONRPCError(GatewayError):
    """A protocol error, answered as a JSON-RPC error response.

    ``rpc_code`` is the JSON-RPC code, ``data`` its optional ``data`` member. The HTTP status is
    not fixed: :func:`http_status` picks it for the era that answers.
    """

    status = 400
    code = "invalid_request"

    def __init__(self, rpc_code: int, message: str, *, data: object = None) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code
        self.data = data

    def as_error_object(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member."""
        error: dict[str, Any] = {"code": self.rpc_code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class UnacceptableNotificationError(JSONRPCError):
    """A notification the server cannot accept: its ``params`` is not an object.

    JSON-RPC answers no notification, in a batch either, so no response carries this error:
    alone, the notification gets an HTTP error status, whose body may be an error without an
    ``id`` (Streamable HTTP, "Sending Messages to the Server"); in a batch, nothing.
    """


def http_status(error: JSONRPCError, era: Era) -> int:
    """The HTTP status of a response carrying ``error``.

    Parse errors, invalid requests and the 2026-07-28 codes (-32020, -32022) mean the message
    itself was refused: 400 in both eras. Otherwise the handshake-era transports answer a request
    with its JSON-RPC response in a 200 body, whatever it holds; 2026-07-28 prescribes 404 for
    an unknown method and 400 for invalid params, and an internal error is a 500.
    """
    code = error.rpc_code
    if code in (PARSE_ERROR, INVALID_REQUEST, HEADER_MISMATCH, UNSUPPORTED_PROTOCOL_VERSION):
        return 400
    if era is Era.HANDSHAKE:
        return 200
    if code == METHOD_NOT_FOUND:
        return 404
    if code == INTERNAL_ERROR:
        return 500
    return 400


class MessageKind(Enum):
    """The three JSON-RPC message shapes a client may post."""

    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


@dataclass(frozen=True, kw_only=True)
class Message:
    """One well-formed JSON-RPC message; ``id`` is ``None`` for a notification."""

    kind: MessageKind
    id: str | int | None = None
    method: str = ""
    params: Mapping[str, Any] | None = None

    @property
    def meta(self) -> Mapping[str, Any] | None:
        """``params._meta`` when it is an object."""
        meta = (self.params or {}).get("_meta")
        return meta if isinstance(meta, dict) else None


def request_id_of(document: object) -> str | int | None:
    """The ``id`` of a (possibly malformed) message, when it is one a response may echo."""
    if isinstance(document, dict):
        value = document.get("id")
        if isinstance(value, str | int) and _is_valid_id(value):
            return value
    return None


def _is_valid_id(value: object) -> bool:
    # MCP: a string or an integer, never null (bool is an int in Python, not in JSON).
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def classify(document: object) -> Message:
    """Read one decoded JSON value as a JSON-RPC message, or raise -32600/-32602.

    A notification whose ``params`` is not an object raises
    :class:`UnacceptableNotificationError`, which no response may answer.
    """
    if not isinstance(document, dict):
        raise JSONRPCError(INVALID_REQUEST, "A JSON-RPC message must be a JSON object.")
    if document.get("jsonrpc") != "2.0":
        raise JSONRPCError(INVALID_REQUEST, 'The "jsonrpc" member must be "2.0".')
    has_id = "id" in document
    if has_id and not _is_valid_id(document["id"]):
        raise JSONRPCError(INVALID_REQUEST, 'The "id" member must be a string or an integer.')
    if "method" not in document:
        if has_id and (("result" in document) != ("error" in document)):
            return Message(kind=MessageKind.RESPONSE, id=document["id"])
        raise JSONRPCError(INVALID_REQUEST, 'A request needs a "method" member.')
    method = document["method"]
    if not isinstance(method, str) or not method:
        raise JSONRPCError(INVALID_REQUEST, 'The "method" member must be a non-empty string.')
    params = document.get("params")
    if params is not None and not isinstance(params, dict):
        refusal = JSONRPCError if has_id else UnacceptableNotificationError
        raise refusal(INVALID_PARAMS, 'The "params" member must be an object.')
    if not has_id:
        return Message(kind=MessageKind.NOTIFICATION, method=method, params=params)
    return Message(kind=MessageKind.REQUEST, id=document["id"], method=method, params=params)


@dataclass(frozen=True, kw_only=True)
class Negotiated:
    """The era and revision a request is answered in."""

    era: Era
    version: str


def unsupported_version(requested: str) -> JSONRPCError:
    """The 2026-07-28 ``UnsupportedProtocolVersionError``, listing what is supported."""
    return JSONRPCError(
        UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version.",
        data={"supported": list(SUPPORTED_VERSIONS), "requested": requested},
    )


def era_of(message: Message, headers: Headers) -> Negotiated:
    """Which era answers ``message``, from its ``MCP-Protocol-Version`` header and ``_meta``.

    The header decides when present: a handshake revision, the stateless revision, or an
    unsupported one (400, -32022). Without it, ``initialize`` and requests without a stateless
    ``_meta`` version are handshake-era requests of 2025-03-26; a request whose ``_meta`` names
    a version lacks its required header (400, -32020).
    """
    header = headers.get(VERSION_HEADER)
    meta = message.meta
    meta_version = meta.get(META_VERSION) if meta is not None else None
    if header is None:
        if message.method == "initialize" or meta_version is None:
            return Negotiated(era=Era.HANDSHAKE, version=DEFAULT_HEADERLESS_VERSION)
        raise JSONRPCError(
            HEADER_MISMATCH, f"Header mismatch: the {VERSION_HEADER} header is missing."
        )
    header = header.strip()
    if header in HANDSHAKE_VERSIONS:
        if meta_version is not None and meta_version != header:
            raise _mismatch(VERSION_HEADER, header, meta_version)
        return Negotiated(era=Era.HANDSHAKE, version=header)
    if header in STATELESS_VERSIONS:
        return Negotiated(era=Era.STATELESS, version=header)
    raise unsupported_version(header)


def check_stateless_request(message: Message, headers: Headers, version: str) -> None:
    """The 2026-07-28 per-request checks: required ``_meta`` fields, then the mirrored headers.

    A missing or malformed required ``_meta`` field is -32602; a missing, malformed or
    mismatched ``MCP-Protocol-Version``, ``Mcp-Method`` or ``Mcp-Name`` header is -32020 (both
    400, "Server Validation").
    """
    meta = message.meta
    if meta is None:
        raise JSONRPCError(INVALID_PARAMS, "params._meta is required.")
    meta_version = meta.get(META_VERSION)
    if not isinstance(meta_version, str):
        raise JSONRPCError(INVALID_PARAMS, f"params._meta[{META_VERSION!r}] must be a string.")
    if not isinstance(meta.get(META_CAPABILITIES), dict):
        raise JSONRPCError(
            INVALID_PARAMS, f"params._meta[{META_CAPABILITIES!r}] must be an object."
        )
    if meta_version != version:
        raise _mismatch(VERSION_HEADER, version, meta_version)
    method_header = _header_value(headers, METHOD_HEADER)
    if method_header != message.method:
        raise _mismatch(METHOD_HEADER, method_header, message.method)
    source = _NAMED_METHODS.get(message.method)
    if source is not None:
        body_value = (message.params or {}).get(source)
        name_header = _header_value(headers, NAME_HEADER)
        if name_header is None or not isinstance(body_value, str):
            raise _mismatch(NAME_HEADER, name_header, body_value)
        if _decode_sentinel(name_header) != body_value:
            raise _mismatch(NAME_HEADER, name_header, body_value)


def _header_value(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    # RFC 9110 §5.5: visible ASCII, space and tab; anything else is a malformed header.
    if not all(c == "\t" or " " <= c <= "~" for c in value):
        raise JSONRPCError(HEADER_MISMATCH, f"Header mismatch: the {name} header is malformed.")
    return value.strip(" \t")


def _decode_sentinel(value: str) -> str | None:
    if not (value.startswith(_SENTINEL_PREFIX) and value.endswith(_SENTINEL_SUFFIX)):
        return value
    encoded = value[len(_SENTINEL_PREFIX) : len(value) - len(_SENTINEL_SUFFIX)]
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise JSONRPCError(
            HEADER_MISMATCH, "Header mismatch: an encoded header value is malformed."
        ) from None


def _mismatch(name: str, header: object, body: object) -> JSONRPCError:
    if header is None:
        return JSONRPCError(HEADER_MISMATCH, f"Header mismatch: the {name} header is missing.")
    # Values are the caller's own; cut them so an error stays a short sentence.
    return JSONRPCError(
        HEADER_MISMATCH,
        f"Header mismatch: {name} header value {str(header)[:100]!r} does not match the body "
        f"value {str(body)[:100]!r}.",
    )


def negotiate_initialize(params: Mapping[str, Any] | None) -> str:
    """The revision ``initialize`` answers: the client's when it is a handshake revision,
    else the latest handshake revision (the client then decides whether to go on)."""
    requested = (params or {}).get("protocolVersion")
    if not isinstance(requested, str):
        raise JSONRPCError(INVALID_PARAMS, "params.protocolVersion must be a string.")
    return requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]


def at_least(version: str, minimum: str) -> bool:
    """Whether revision ``version`` is ``minimum`` or later (both known revisions)."""
    return SUPPORTED_VERSIONS.index(version) >= SUPPORTED_VERSIONS.index(minimum)
