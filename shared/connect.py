"""HTTP/1.1 CONNECT request and response heads, sans-IO. Side: parent and enclave.

The egress tunnel (DESIGN.md section 3) speaks plain HTTP CONNECT (RFC 9110
section 9.3.6) twice: the enclave's HTTP clients (ccxt on aiohttp, boto3 on urllib3)
ask the enclave's local proxy for a tunnel, and the enclave's proxy asks the
parent's egress proxy for the same tunnel over one transport stream. This module
only turns bytes into typed heads and back, in the manner of h11: no sockets, no
event loop, bounded buffers, one exception for everything the peer got wrong.

Wire format, one tunnel per transport stream (enclave -> parent)::

    CONNECT api.binance.com:443 HTTP/1.1\\r\\n
    Host: api.binance.com:443\\r\\n
    \\r\\n
                                                 (parent checks its allowlist,
                                                  resolves and connects)
    HTTP/1.1 200 Connection established\\r\\n
    \\r\\n
    <raw bytes both ways until either side closes: TLS records only>

or, instead of 200, one error head and the stream is closed::

    HTTP/1.1 403 Host not allowed: evil.example:443\\r\\n
    Content-Length: 0\\r\\n
    Connection: close\\r\\n
    \\r\\n

Status codes: 200 tunnel open; 400 malformed head; 403 host:port not in the
allowlist (or, on the parent, resolving to a non-public address); 405 a method
other than CONNECT; 408 the head did not arrive in time; 431 the head is larger
than ``MAX_HEAD_SIZE``; 502 the destination is unreachable or refused the
connection; 503 too many tunnels; 504 connecting timed out. The reason phrase is
a short, fixed text, followed for 403 by the ``host:port`` that was refused.

Accepted requests (strict; everything else is ``ConnectHeadError``):

* request line ``CONNECT SP host:port SP HTTP/1.1`` (``HTTP/1.0`` too: Python
  3.11's http.client, under urllib3 and so boto3, still tunnels with 1.0);
* the target in authority form only: no scheme, no path, no userinfo, port
  always present (RFC 9110 section 9.3.6, RFC 9112 section 3.2.3);
* host: a DNS name of letters, digits and hyphens whose rightmost label starts
  with a letter, or a dotted-quad IPv4 address without leading zeros. IPv6
  literals, trailing dots, underscores, percent-encoding and non-ASCII are
  refused: each is a spelling that could make two names look different to the
  allowlist and the same to the resolver (``0x7f000001``, ``1.2.3``, ``a.com.``);
* port: 1..65535 in decimal, no leading zero;
* CRLF line endings only, no obsolete line folding, no whitespace before a
  field's colon, at most ``MAX_FIELDS`` field lines, ASCII only, exactly one
  valid ``Host`` in HTTP/1.1 (RFC 9112 section 3.2), no content: neither
  ``Transfer-Encoding`` nor a non-zero ``Content-Length`` (RFC 9110 section
  9.3.6: "A CONNECT request message does not have content").

Other request fields are checked for syntax and then dropped: the enclave
forwards a fresh head that carries only host:port, so nothing its HTTP clients
put in a proxy request (User-Agent, Proxy-Authorization) reaches the parent.

Exception tree (``shared.errors``)::

    RemoteProtocolError
    └── ConnectHeadError      the peer sent a head we refuse; ``status`` is the
                              HTTP status to answer with (400, 405, 431)
    LocalProtocolError        we were asked to format an invalid head (a bug)

Error messages are fixed strings: they never quote the peer's bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_FIELDS",
    "MAX_HEAD_SIZE",
    "ConnectHeadError",
    "ConnectRequest",
    "ConnectResponse",
    "HeadReader",
    "error_response",
    "format_connect_request",
    "format_connect_response",
    "normalize_host",
    "parse_authority",
    "parse_connect_request",
    "parse_connect_response",
]

MAX_HEAD_SIZE = 8 * 1024
"""Largest request or response head accepted, terminating blank line included.
A CONNECT head is under 200 bytes in practice; 8 KiB is what common servers allow."""

MAX_FIELDS = 64
"""Most field lines accepted in one head."""

_MAX_REASON = 200
_TERMINATOR = b"\r\n\r\n"

# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5, restricted to ASCII: field-value of VCHAR, SP and HTAB.
_FIELD_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*|")
# RFC 9112 section 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ), ASCII only here.
_REASON = re.compile(r"[\t \x21-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_OCTET = re.compile(r"0|[1-9][0-9]{0,2}")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_VERSION = re.compile(r"HTTP/1\.[01]")
_STATUS = re.compile(r"[1-5][0-9][0-9]")

_REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ConnectHeadError(RemoteProtocolError):
    """The peer sent a CONNECT head we refuse; ``status`` is the status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequest:
    """A validated tunnel target: a normalised (lowercase) host and a port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            valid = normalize_host(self.host) == self.host and 1 <= self.port <= 65535
        except ConnectHeadError:
            valid = False
        if not valid:
            raise LocalProtocolError("not a normalised host and a port in 1..65535")

    @property
    def authority(self) -> str:
        """``host:port``, the authority form of the target."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectResponse:
    """The proxy's answer: a status code and its reason phrase."""

    status: int
    reason: str

    @property
    def ok(self) -> bool:
        """True for a 2xx answer: the tunnel is open (RFC 9110 section 9.3.6)."""
        return 200 <= self.status <= 299


class HeadReader:
    """Bytes in, one head out. No I/O: feed it whatever the socket returned.

    ``feed`` returns the head (terminating blank line included) once it is
    complete; bytes after it (a pipelined TLS ClientHello, or the first bytes the
    destination sent) are kept in ``rest`` for the caller to relay. At most
    ``max_size`` bytes are ever searched for the end of the head.
    """

    def __init__(self, *, max_size: int = MAX_HEAD_SIZE) -> None:
        if not 4 <= max_size <= MAX_HEAD_SIZE:
            raise ValueError("max_size out of range")
        self._max = max_size
        self._buffer = bytearray()
        self._done = False
        self._rest = b""

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes; return the complete head, or None while it is incomplete."""
        if self._done:
            raise LocalProtocolError("the head is already complete (or refused)")
        start = max(0, len(self._buffer) - 3)  # the terminator may straddle two reads
        self._buffer += data
        # Search only the first max_size bytes: a head must end inside them.
        end = self._buffer.find(_TERMINATOR, start, self._max)
        if end < 0:
            if len(self._buffer) >= self._max:
                self._done = True
                self._buffer.clear()
                raise ConnectHeadError("head too large", status=431)
            return None
        end += len(_TERMINATOR)
        self._done = True
        head = bytes(self._buffer[:end])
        self._rest = bytes(self._buffer[end:])
        self._buffer.clear()
        return head

    @property
    def rest(self) -> bytes:
        """Bytes received after the head (empty until the head is complete)."""
        return self._rest

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the end of the head."""
        return len(self._buffer)


# --------------------------------------------------------------------------- hosts


def normalize_host(text: str) -> str:
    """A DNS name or dotted-quad IPv4 address, lowercased; ``ConnectHeadError`` otherwise."""
    if not text or len(text) > 253 or not text.isascii():
        raise ConnectHeadError("invalid host")
    host = text.lower()
    labels = host.split(".")
    if len(labels) == 4 and all(label.isdigit() for label in labels):
        # Strict dotted quad: inet_aton would also read octal (010) and short forms.
        if all(_OCTET.fullmatch(label) and int(label) <= 255 for label in labels):
            return host
        raise ConnectHeadError("invalid host")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ConnectHeadError("invalid host")
    # RFC 3696 section 2: a top-level label is never all-numeric. Requiring a
    # letter first also refuses names resolvers read as numbers (0x7f000001, 1.2.3).
    if not labels[-1][0].isalpha():
        raise ConnectHeadError("invalid host")
    return host


def parse_authority(text: str) -> tuple[str, int]:
    """``host:port`` (authority form, RFC 9112 section 3.2.3) -> (normalised host, port)."""
    host, sep, port = text.rpartition(":")
    # RFC 9110 section 9.3.6: there is no default port; the client MUST send one.
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535:
        raise ConnectHeadError("target must be host:port with a port in 1..65535")
    # '@' (userinfo), '/' (a path or scheme), '[' (IPv6) all fail the host grammar.
    return normalize_host(host), int(port)


# --------------------------------------------------------------------------- heads


def _split_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """A complete head -> (start line, [(lowercased field name, value)])."""
    if len(head) > MAX_HEAD_SIZE:
        raise ConnectHeadError("head too large", status=431)
    if not head.endswith(_TERMINATOR):
        raise ConnectHeadError("head is not terminated by an empty line")
    try:
        text = head[: -len(_TERMINATOR)].decode("ascii")
    except UnicodeDecodeError:
        raise ConnectHeadError("head is not ASCII") from None
    lines = text.split("\r\n")
    # RFC 9112 section 2.2: a bare CR or LF is not a line ending we accept; NUL
    # and other controls are never allowed in a head.
    if any(_CONTROL.search(line) for line in lines):
        raise ConnectHeadError("control character in head")
    if len(lines) - 1 > MAX_FIELDS:
        raise ConnectHeadError("too many header fields")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        # RFC 9112 section 5.2: obsolete line folding is refused with 400.
        if line[:1] in (" ", "\t"):
            raise ConnectHeadError("obsolete line folding")
        name, colon, value = line.partition(":")
        # RFC 9112 section 5.1: no whitespace between field name and colon.
        if not colon or not _TOKEN.fullmatch(name):
            raise ConnectHeadError("malformed header field")
        value = value.strip(" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise ConnectHeadError("malformed header field")
        fields.append((name.lower(), value))
    return lines[0], fields


def parse_connect_request(head: bytes) -> ConnectRequest:
    """A complete request head (from ``HeadReader``) -> its target, or ``ConnectHeadError``."""
    start, fields = _split_head(head)
    parts = start.split(" ")
    # RFC 9112 section 3: request-line = method SP request-target SP HTTP-version.
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise ConnectHeadError("malformed request line")
    method, target, version = parts
    # RFC 9110 section 9.1: method names are case-sensitive; "connect" is another method.
    if method != "CONNECT":
        raise ConnectHeadError("only CONNECT is supported", status=405)
    if not _VERSION.fullmatch(version):
        raise ConnectHeadError("unsupported HTTP version")
    host, port = parse_authority(target)
    hosts = [value for name, value in fields if name == "host"]
    # RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one valid Host.
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise ConnectHeadError("exactly one Host field is required")
    for value in hosts:
        if ":" in value:
            parse_authority(value)
        else:
            normalize_host(value)
    for name, value in fields:
        # RFC 9110 section 9.3.6: a CONNECT request has no content, so bytes after
        # the head are always tunnel data; a framed body would desynchronise peers.
        if name == "transfer-encoding" or (name == "content-length" and value != "0"):
            raise ConnectHeadError("a CONNECT request has no content")
    return ConnectRequest(host=host, port=port)


def parse_connect_response(head: bytes) -> ConnectResponse:
    """A complete response head -> status and reason, or ``ConnectHeadError``.

    Fields are syntax-checked and ignored: RFC 9110 section 9.3.6 has the client
    ignore Content-Length and Transfer-Encoding in a 2xx answer to CONNECT.
    """
    start, _fields = _split_head(head)
    # RFC 9112 section 4: status-line = HTTP-version SP status-code SP [ reason-phrase ].
    version, sp1, rest = start.partition(" ")
    status, sp2, reason = rest.partition(" ")
    if not (sp1 and sp2 and _VERSION.fullmatch(version) and _STATUS.fullmatch(status)):
        raise ConnectHeadError("malformed status line")
    if not _REASON.fullmatch(reason) or len(reason) > _MAX_REASON:
        raise ConnectHeadError("malformed reason phrase")
    return ConnectResponse(status=int(status), reason=reason)


def format_connect_request(request: ConnectRequest) -> bytes:
    """The head the enclave sends to the parent: target and Host, nothing else."""
    authority = request.authority
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def format_connect_response(status: int, reason: str | None = None) -> bytes:
    """A response head; errors carry ``Content-Length: 0`` and ``Connection: close``."""
    if not 200 <= status <= 599:
        raise LocalProtocolError("status out of range")
    text = _REASONS.get(status, "Error") if reason is None else reason
    if not _REASON.fullmatch(text) or len(text) > _MAX_REASON:
        raise LocalProtocolError("reason phrase must be short printable ASCII")
    if 200 <= status <= 299:
        # RFC 9110 section 9.3.6: no Content-Length or Transfer-Encoding in a 2xx.
        return f"HTTP/1.1 {status} {text}\r\n\r\n".encode("ascii")
    # RFC 9110 section 15.5.6: a 405 names the methods that are supported.
    allow = "Allow: CONNECT\r\n" if status == 405 else ""
    head = f"HTTP/1.1 {status} {text}\r\n{allow}Content-Length: 0\r\nConnection: close\r\n\r\n"
    return head.encode("ascii")


def error_response(error: ConnectHeadError) -> bytes:
    """The response head that answers a refused request head."""
    status = error.status if error.status in _REASONS else 400
    return format_connect_response(status, f"{_REASONS[status]}: {error}")
