"""Exception tree shared by parent, enclave and clients. Side: any.

    PerfAggError
    ├── ProtocolError                 wire protocol (shared.protocol)
    │   ├── LocalProtocolError        we were asked to send something invalid
    │   └── RemoteProtocolError       the peer sent bytes we refuse
    ├── EnvelopeError                 any failure to seal/open a credential envelope
    ├── AttestationError              an attestation document is malformed or untrusted
    ├── SignatureError                a signed result or owner proof does not verify
    └── TransportError                a transport could not connect / listen

Messages never contain key material, plaintext, tokens or session ids in clear.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "EnvelopeError",
    "LocalProtocolError",
    "PerfAggError",
    "ProtocolError",
    "RemoteProtocolError",
    "SignatureError",
    "TransportError",
]


class PerfAggError(Exception):
    """Root of every error this project raises on purpose."""


class ProtocolError(PerfAggError):
    """The parent<->enclave wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to encode something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message."""


class EnvelopeError(PerfAggError):
    """An envelope could not be sealed or opened.

    Opening failures are deliberately indistinguishable (one message, no cause
    chained) so that the error is not a decryption oracle.
    """


class AttestationError(PerfAggError):
    """An attestation document failed decoding or verification; ``reason`` says which check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(PerfAggError):
    """A signature over a canonical payload or an owner proof did not verify."""


class TransportError(PerfAggError):
    """A transport adapter failed to connect or to listen."""
