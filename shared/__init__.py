"""Code common to the parent, the enclave and clients of perf-aggregator.

Side of the trust boundary: any. The sans-IO modules here (protocol, envelope,
attestation, encoding, signing) never import asyncio, socket or psycopg; the few
I/O adapters live in ``shared.io``.
"""
