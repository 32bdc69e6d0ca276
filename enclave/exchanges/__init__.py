"""Exchange connectivity inside the enclave: ccxt clients, history fetchers, pollers. Side: enclave.

- ``client``: builds one ``ccxt.async_support`` exchange per session (credentials,
  egress proxy, CA bundle, per-exchange options) and maps ccxt exceptions to a small
  taxonomy with fixed messages.
- ``history``: per-exchange complete-history fetchers, the per-session trade ledger
  and the completeness record.
- ``polling``: the sans-IO adaptive scheduler, the per-session poller task and the
  ``PollingManager`` the service drives.
"""
