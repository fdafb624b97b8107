"""Caller paths the gateway must refuse with 400 ``invalid_path`` (docs/contract.md §5), as plain
data.

Each entry is ``(id, path)``; ``path`` is what the invoke envelope's ``path`` field would carry
(it may include ``?query``). The unit tests of :mod:`invoke_middleware.target` check each one;
integration tests replay them through the real middleware and check that the container
received nothing.

:data:`RELAY_SAFE` names the entries that can also be sent on the raw catch-all relay, as
``/r/containers/{slug}`` followed by the path: those that begin with ``/`` and hold only
visible ASCII without ``#``, so that any HTTP client can put them in a request line unchanged.
The others (control characters, spaces, unicode, no leading ``/``, fragments) can only be
expressed inside the JSON envelope.
"""

from __future__ import annotations

HOSTILE_PATHS: list[tuple[str, str]] = [
    # A scheme, or anything that is not an absolute path.
    ("scheme-http", "http://evil.example/"),
    ("scheme-https", "https://evil.example/x"),
    ("scheme-upper-case", "HTTP://evil.example/"),
    ("scheme-without-slashes", "http:evil.example"),
    ("scheme-javascript", "javascript:alert(1)"),
    ("scheme-file", "file:///etc/passwd"),
    ("relative-path", "x/y"),
    ("relative-dot", "./x"),
    ("bare-dot-dot", ".."),
    ("empty", ""),
    ("query-only", "?a=1"),
    # A network-path reference: "//host" changes the host for most parsers.
    ("leading-double-slash", "//evil.example/x"),
    ("leading-triple-slash", "///evil.example/x"),
    ("leading-double-slash-userinfo", "//user@evil.example/"),
    ("leading-double-slash-alone", "//"),
    # Backslashes: WHATWG parsers read them as "/".
    ("backslash-leading", "\\evil.example/x"),
    ("backslash-double-leading", "\\\\evil.example/x"),
    ("slash-backslash", "/\\evil.example/x"),
    ("backslash-inside", "/a\\b"),
    ("backslash-dot-dot", "/..\\..\\etc/passwd"),
    ("backslash-trailing", "/a\\"),
    # User information.
    ("userinfo", "user@evil.example/x"),
    ("userinfo-password", "user:pass@evil.example/"),
    ("userinfo-leading-at", "@evil.example/x"),
    ("userinfo-host-only", "evil.example@"),
    # Whitespace and control characters.
    ("space", "/a b"),
    ("leading-space", " /a"),
    ("trailing-space", "/a "),
    ("tab", "/a\tb"),
    ("carriage-return", "/a\rb"),
    ("line-feed", "/a\nb"),
    ("crlf-header-injection", "/a\r\nHost: evil.example"),
    ("nul", "/a\x00b"),
    ("del", "/a\x7fb"),
    ("vertical-tab", "/a\x0bb"),
    ("form-feed", "/a\x0cb"),
    ("escape-character", "/a\x1bb"),
    ("next-line-u0085", "/a\x85b"),
    ("no-break-space-u00a0", "/a\xa0b"),
    ("line-separator-u2028", "/a\u2028b"),
    ("ideographic-space-u3000", "/a\u3000b"),
    ("zero-width-space-u200b", "/a\u200bb"),
    ("byte-order-mark", "\ufeff/a"),
    ("right-to-left-override", "/a\u202eb"),
    # Fragments never reach a server.
    ("fragment", "/a#b"),
    ("fragment-only", "/#"),
    ("fragment-before-query", "/a#b?c=1"),
    # Dot segments, literal and encoded in every case mix.
    ("dot-dot", "/.."),
    ("dot-dot-slash", "/../x"),
    ("dot-dot-twice", "/a/../../x"),
    ("dot-dot-trailing", "/a/.."),
    ("dot", "/."),
    ("dot-slash", "/./x"),
    ("dot-trailing", "/a/."),
    ("dot-dot-before-query", "/a/..?x=1"),
    ("encoded-dot-dot-lower", "/%2e%2e/x"),
    ("encoded-dot-dot-upper", "/%2E%2E/x"),
    ("encoded-dot-dot-mixed", "/%2e%2E/x"),
    ("encoded-dot-dot-mixed-reverse", "/%2E%2e/x"),
    ("half-encoded-dot-dot-second", "/.%2e/x"),
    ("half-encoded-dot-dot-first", "/%2e./x"),
    ("half-encoded-dot-dot-upper", "/.%2E/x"),
    ("encoded-dot-lower", "/%2e/x"),
    ("encoded-dot-upper", "/%2E/x"),
    ("encoded-dot-trailing", "/a/%2e"),
    ("encoded-dot-dot-trailing", "/a/%2e%2e"),
    ("double-encoded-dot-dot", "/%252e%252e/x"),
    ("double-encoded-dot-dot-upper", "/%252E%252E/x"),
    ("dot-dot-path-parameter", "/..;/x"),
    ("encoded-dot-dot-path-parameter", "/%2e%2e;jsessionid=1/x"),
    ("dot-path-parameter", "/.;x/y"),
    # Encoded "/", "\" and NUL.
    ("encoded-slash-lower", "/a%2fb"),
    ("encoded-slash-upper", "/a%2Fb"),
    ("encoded-double-slash", "/%2f%2fevil.example"),
    ("encoded-slash-dot-dot", "/..%2f..%2fetc/passwd"),
    ("encoded-dot-dot-encoded-slash", "/%2e%2e%2f%2e%2e%2fetc"),
    ("double-encoded-slash", "/a%252fb"),
    ("triple-encoded-slash", "/a%25252Fb"),
    ("encoded-backslash-lower", "/a%5cb"),
    ("encoded-backslash-upper", "/a%5Cb"),
    ("encoded-backslash-dot-dot", "/..%5c..%5cetc"),
    ("double-encoded-backslash", "/a%255cb"),
    ("encoded-nul", "/a%00b"),
    ("encoded-nul-extension", "/file.txt%00.png"),
    ("double-encoded-nul", "/a%2500b"),
    # Every character of the escape encoded again: one decoding gives "%2e" / "%2f".
    ("double-encoded-dot-dot-all-hex", "/%25%32%65%25%32%65/admin"),
    ("double-encoded-slash-all-hex", "/%25%32%66etc"),
    ("double-encoded-backslash-all-hex", "/a%25%35%63b"),
    ("triple-encoded-dot-dot", "/%2525%32%65%2525%32%65/x"),
    # Dot segments behind look-alikes: a stack that decodes once and then splits at "?", "#" or
    # ";", trims whitespace, accepts overlong UTF-8 or folds Unicode (NFKC) sees "..".
    ("dot-dot-encoded-question-mark", "/..%3f/admin"),
    ("dot-dot-encoded-hash", "/..%23/admin"),
    ("encoded-dot-dot-encoded-semicolon", "/%2e%2e%3b/admin"),
    ("dot-dot-encoded-space", "/..%20/admin"),
    ("dot-encoded-nbsp", "/.%c2%a0/admin"),
    ("double-encoded-dot-dot-question-mark", "/%252e%252e%253f/admin"),
    ("overlong-two-byte-dot-dot", "/%c0%ae%c0%ae/admin"),
    ("overlong-three-byte-dot-dot", "/%e0%80%ae%e0%80%ae/admin"),
    ("overlong-four-byte-dot", "/%f0%80%80%ae/admin"),
    ("encoded-fullwidth-dot-dot", "/%ef%bc%8e%ef%bc%8e/admin"),
    ("encoded-one-dot-leader-pair", "/%e2%80%a4%e2%80%a4/admin"),
    ("encoded-two-dot-leader", "/%e2%80%a5/admin"),
    ("encoded-small-full-stop", "/%ef%b9%92/admin"),
    # The same decoders, and decoders that drop malformed bytes, trim more whitespace or delete
    # default-ignorable code points (NFKC_Casefold), reading ".." in the rest of a segment.
    ("dot-dot-malformed-byte", "/..%ad/admin"),
    ("dot-dot-latin-1-next-line", "/..%85/admin"),
    ("truncated-lead-bytes-before-dots", "/%c0%2e%c0%2e/admin"),
    ("dot-dot-overlong-dot-dropped", "/..%c0%ae/admin"),
    ("overlong-dot-dropped-dot-dot", "/%e0%80%ae../admin"),
    ("dot-dot-encoded-soft-hyphen", "/..%c2%ad/admin"),
    ("dot-dot-encoded-zero-width-space", "/..%e2%80%8b/admin"),
    ("encoded-dot-dot-byte-order-mark", "/%2e%2e%ef%bb%bf/admin"),
    ("encoded-mongolian-vowel-separator-dot-dot", "/%e1%a0%8e../admin"),
    # Separators and control characters that only a lenient decoder sees: overlong UTF-8
    # (also after a second decoding, and an overlong "%" that makes an escape), NFKC folding.
    ("overlong-slash-dot-dot", "/..%c0%af..%c0%afetc%c0%afpasswd"),
    ("encoded-dot-dot-overlong-slash", "/%2e%2e%c0%afadmin"),
    ("overlong-slash", "/a%c0%afb"),
    ("overlong-three-byte-slash", "/a%e0%80%afb"),
    ("overlong-four-byte-slash", "/a%f0%80%80%afb"),
    ("overlong-backslash", "/..%c1%9cadmin"),
    ("double-encoded-overlong-slash", "/..%25c0%25afadmin"),
    ("overlong-percent-before-2f", "/..%c0%a52fadmin"),
    ("encoded-fullwidth-solidus", "/..%ef%bc%8fadmin"),
    ("encoded-fullwidth-reverse-solidus", "/%2e%2e%ef%bc%bcadmin"),
    ("encoded-small-reverse-solidus", "/a%ef%b9%a8b"),
    ("encoded-care-of", "/%e2%84%85"),
    ("overlong-nul", "/a%c0%80b"),
    ("overlong-three-byte-nul", "/..%e0%80%80"),
    ("overlong-crlf", "/a%c0%8d%c0%8aX-Injected:%201"),
    # Encoded control characters: a server that logs or routes on the decoded path sees them.
    ("encoded-crlf", "/a%0d%0aX-Injected:%20yes"),
    ("encoded-tab", "/a%09b"),
    ("encoded-escape", "/a%1bb"),
    ("encoded-delete", "/a%7fb"),
    ("double-encoded-line-feed", "/a%250ab"),
    # C1 controls and the Unicode line separators, as UTF-8: U+0085 (next line) ends a line for
    # Java's and Python's line splitting, U+2028 and U+2029 for older JavaScript.
    ("encoded-next-line", "/a%c2%85X-Injected:%201"),
    ("encoded-c1-last", "/a%c2%9fb"),
    ("encoded-line-separator", "/a%e2%80%a8b"),
    ("encoded-paragraph-separator", "/a%E2%80%A9b"),
    ("double-encoded-next-line", "/a%25c2%2585b"),
    # Malformed percent-escapes.
    ("percent-alone", "/a%"),
    ("percent-one-digit", "/a%2"),
    ("percent-one-digit-before-query", "/a%2?x=1"),
    ("percent-non-hex", "/a%zz"),
    ("percent-half-hex", "/a%g0"),
    ("percent-percent", "/%%32%65"),
    ("percent-space", "/a% 2"),
    # Non-ASCII: lookalikes must not survive a normalising parser.
    ("fullwidth-solidus", "/\uff0fevil.example"),
    ("fullwidth-solidus-leading", "\uff0f\uff0fevil.example"),
    ("fullwidth-full-stop-dot-dot", "/\uff0e\uff0e/x"),
    ("fullwidth-reverse-solidus", "/\uff3cevil.example"),
    ("fullwidth-letters", "/\uff41\uff44\uff4d\uff49\uff4e"),
    ("division-slash", "/a\u2215b"),
    ("one-dot-leader", "/\u2024\u2024/x"),
    ("latin-small-e-acute", "/caf\xe9"),
    ("cyrillic-a", "/\u0430dmin"),
    # Characters that must be percent-encoded in a path (RFC 3986 §3.3).
    ("double-quote", '/a"b'),
    ("angle-brackets", "/<script>"),
    ("curly-braces", "/a{b}"),
    ("pipe", "/a|b"),
    ("caret", "/a^b"),
    ("backtick", "/a`b"),
    ("square-brackets", "/[::1]"),
    # Over-long.
    ("over-long", "/" + "a" * 2048),
    ("over-long-encoded", "/" + "%41" * 683),
    # The query part.
    ("query-space", "/x?a=b c"),
    ("query-tab", "/x?a=\t"),
    ("query-crlf", "/x?a=1\r\nHost: evil.example"),
    ("query-nul", "/x?a=\x00"),
    ("query-fragment", "/x?a=1#b"),
    ("query-percent-alone", "/x?a=%"),
    ("query-percent-non-hex", "/x?a=%zz"),
    ("query-non-ascii", "/x?q=caf\xe9"),
    ("query-fullwidth", "/x?q=\uff0f"),
    ("query-over-long", "/x?" + "a" * 8193),
]


def _expressible_in_request_line(path: str) -> bool:
    return path.startswith("/") and all("\x21" <= c <= "\x7e" and c != "#" for c in path)


#: The ids of :data:`HOSTILE_PATHS` that can be sent unchanged on the catch-all relay.
RELAY_SAFE: frozenset[str] = frozenset(
    case_id for case_id, path in HOSTILE_PATHS if _expressible_in_request_line(path)
)
