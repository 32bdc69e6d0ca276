"""The untrusted parent host: HTTPS API, PostgreSQL store, enclave RPC client, egress.

Side: parent. Nothing here can decrypt credentials: compromising it gives denial of
service, never secrets and never forged results.
"""
