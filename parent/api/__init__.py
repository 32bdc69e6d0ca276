"""The parent's public HTTPS API, one module per job. Side: parent (untrusted host).

- ``errors``       the JSON error shape and the mapping of every failure to a status
- ``services``     what handlers share: config, store, enclave port, metrics, audit log
- ``validation``   parsing and checking of request bodies, headers and path parameters
- ``middlewares``  request id + request log + metrics, CORS, error mapping, rate limit
- ``attestation``  GET /attestation/quote
- ``sessions``     /enclave/* and GET /api/logs/{session_id}
- ``records``      /api/records (sealed records)
- ``operations``   /healthz, /readyz, /metrics, /openapi.json, /docs
- ``purge``        the background TTL purge

``parent.app.create_app`` assembles them.
"""
