"""Composition root of the parent process: picks every adapter and runs the API. Side: parent.

``serve(config)`` builds, in order::

    logging -> TLS files + SSL context -> database (DATABASE_URL, or the embedded
    PostgreSQL under STATE_DIR, migrated) -> Store (app_service role; with SEALING=kms
    it holds session leases as REPLICA_ID) -> enclave client (vsock or tcp-sim,
    connecting in the background) -> egress proxy for the enclave (allowlist) ->
    enclave supervisor (SEALING=kms: unlock, restore held sessions, checkpoint) + lease
    manager (renew, take over, release) + session router (forward to the lease holder)
    -> aiohttp app (+ TTL purge) -> HTTPS site on HOST:ENCLAVE_PORT

and runs until cancelled, then tears everything down in reverse. The parent starts
even when the enclave is not up yet: enclave-backed requests answer 503 until the
client's background reconnect succeeds and, with sealing, until the supervisor has
unlocked the enclave and restored every stored session (``/readyz`` says which).

With ``DATABASE_URL`` the process connects with that URL (meant to be the
``app_service`` role) and does not migrate: app_service cannot run DDL by design, and
the long-running, internet-facing process should not hold admin credentials. Run
``python -m parent migrate --database-url <admin URL>`` before starting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from parent.api.forwarding import SessionRouter
from parent.api.services import EnclavePort
from parent.app import create_app
from parent.config import ConfigError, Mode, ParentConfig
from parent.db.embedded import EmbeddedPostgres
from parent.db.store import LeaseHolder, Store
from parent.egress import ParentEgress
from parent.enclave_client import EnclaveClient
from parent.enclave_supervisor import EnclaveSupervisor, credentials_from_config
from parent.leases import LeaseManager
from parent.metrics import ApiMetrics
from parent.tls import TlsFiles, ensure_dev_certificates, server_ssl_context
from shared.io.transport import VMADDR_CID_ANY, VsockAddress, transport_from_config
from shared.logsetup import configure_logging

__all__ = ["serve", "tls_files"]

log = structlog.get_logger("parent.main")


def tls_files(config: ParentConfig) -> TlsFiles:
    """The configured certificate and key, or the dev ones (development only)."""
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        return TlsFiles(cert_file=config.tls_cert_file, key_file=config.tls_key_file)
    # ParentConfig refuses this branch in production.
    return ensure_dev_certificates(config.state_dir / "tls")


@contextlib.asynccontextmanager
async def _database(config: ParentConfig) -> AsyncIterator[Store]:
    """A Store on DATABASE_URL, or on the embedded PostgreSQL (started and migrated here)."""
    embedded: EmbeddedPostgres | None = None
    if config.database_url is not None:
        conninfo = config.database_url
    else:
        embedded = EmbeddedPostgres(config.state_dir)
        # initdb / pg_ctl are blocking subprocess calls: keep them off the event loop.
        conninfo = (await asyncio.to_thread(embedded.start)).app
    # Leases only make sense with sealed state another replica can restore.
    holder = (
        LeaseHolder(
            replica_id=config.replica_id,
            url=config.replica_url,
            lease_seconds=config.lease_seconds,
        )
        if config.sealing == "kms"
        else None
    )
    try:
        store = await Store.open(conninfo, holder=holder)
        try:
            leaks = await store.logging_leaks()
            if leaks:
                # Statement or parameter logging would put stored values in server logs.
                log.error("database_logging_unsafe", settings=leaks)
                if config.mode is Mode.PRODUCTION:
                    raise SystemExit(
                        "refusing to start: PostgreSQL logs the app role's statements or "
                        f"parameters ({', '.join(leaks)})"
                    )
            yield store
        finally:
            await store.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def serve(config: ParentConfig) -> None:
    """Run the parent until cancelled (SIGINT / SIGTERM in ``python -m parent run``)."""
    # No core dumps: the parent holds no plaintext secret, but its memory has AWS
    # credentials and session ids passing through; a crash must not write them to disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    configure_logging("parent", level=config.log_level)
    files = tls_files(config)
    ssl_context = server_ssl_context(files)
    async with _database(config) as store:
        transport = transport_from_config(config.transport, config.vsock_port_map or None)
        enclave = EnclaveClient(transport, config.enclave_address)
        await enclave.start()  # returns at once when the enclave is not up yet
        metrics = ApiMetrics()
        egress = ParentEgress(
            transport,
            # On vsock the parent accepts from any CID; the simulator keys its port map
            # on the address the enclave dials.
            address=config.egress_address
            if config.transport == "tcp-sim"
            else VsockAddress(cid=VMADDR_CID_ANY, port=config.egress_vsock_port),
            allowlist=config.egress_allowlist,
            host_overrides=config.egress_host_overrides,
            production=config.mode is Mode.PRODUCTION,
            registry=metrics.registry,
        )
        await egress.start()
        supervisor: EnclaveSupervisor | None = None
        leases: LeaseManager | None = None
        router: SessionRouter | None = None
        api_enclave: EnclavePort = enclave
        if config.sealing == "kms":
            if config.kms_key_id is None or config.aws_region is None:
                # from_env refuses this; a config built by hand must not slip through.
                raise ConfigError("SEALING=kms needs KMS_KEY_ID and AWS_REGION")
            leases = LeaseManager(
                enclave,
                store,
                ready=lambda: supervisor is not None and supervisor.ready,
                lease_seconds=config.lease_seconds,
            )
            router = SessionRouter(
                store,
                leases,
                secret=await store.replica_secret(),
                ssl_context=ssl.create_default_context(
                    cafile=None if config.replica_ca_file is None else str(config.replica_ca_file)
                ),
            )
            supervisor = EnclaveSupervisor(
                enclave,
                store,
                key_id=config.kms_key_id,
                region=config.aws_region,
                credentials=credentials_from_config(config),
                metrics=metrics,
                checkpoint_interval=config.checkpoint_interval_seconds,
                leases=leases,
            )
            api_enclave = supervisor.gate(enclave)
            await supervisor.start()
            await leases.start()
            await router.start()
        else:
            log.warning("sealing_off", consequence="an enclave restart loses every session")
        try:
            app = create_app(
                config,
                store=store,
                enclave=api_enclave,
                metrics=metrics,
                readiness=supervisor,
                router=router,
            )
            # access_log=None: our own request log line replaces aiohttp's, which
            # would print concrete paths (and so session ids).
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
                await site.start()
                host = f"[{config.host}]" if ":" in config.host else config.host
                log.info(
                    "listening",
                    url=f"https://{host}:{config.port}",
                    mode=config.mode.value,
                    transport=config.transport,
                    enclave=str(config.enclave_address),
                    database="external" if config.database_url else "embedded",
                    sealing=config.sealing,
                    ca_file=None if files.ca_file is None else str(files.ca_file),
                    replica=None if leases is None else config.replica_id,
                    replica_url=None if leases is None else config.replica_url,
                    lease_seconds=None if leases is None else config.lease_seconds,
                )
                await asyncio.Event().wait()  # until cancelled
            finally:
                await runner.cleanup()
        finally:
            if router is not None:
                await router.close()
            if leases is not None:
                # Let the other replicas take our sessions over at once.
                await leases.close(release=True)
            if supervisor is not None:
                await supervisor.close()
            await egress.close()
            await enclave.close()
            log.info("stopped")
