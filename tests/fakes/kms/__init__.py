"""KMS simulator: AWS KMS with Recipient attestation, for dev and tests. Side: test fake.

A real HTTPS server speaking the KMS JSON protocol, so the enclave's unmodified boto3
adapter (``enclave.kms.Boto3Kms``) runs against it; it enforces a PCR key policy on the
NSM simulator's attestation documents and answers with real CMS, as KMS does.

- ``server.py``: ``KmsSimulator`` (keys, policies, checks), the aiohttp app,
  ``serve_in_thread`` for synchronous tests;
- ``cms_writer.py``: CMS EnvelopedData as KMS writes it (BER indefinite or DER);
- ``sigv4.py``: SigV4 signature checking;
- ``__main__.py``: ``python -m tests.fakes.kms serve ...`` (see its docstring).
"""

from .server import Call, KeyPolicy, KmsFault, KmsSimulator, create_app, serve_in_thread
from .sigv4 import TestCredentials

__all__ = [
    "Call",
    "KeyPolicy",
    "KmsFault",
    "KmsSimulator",
    "TestCredentials",
    "create_app",
    "serve_in_thread",
]
