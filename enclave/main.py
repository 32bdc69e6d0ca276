"""Composition root of the enclave process: the only place that picks adapters. Side: enclave.

Production: the real /dev/nsm device and AF_VSOCK. Simulator: the NSM simulator
(root certificate under STATE_DIR) and vsock-over-TCP on 127.0.0.1. The two never
mix: production mode refuses the simulator adapters in config validation, and
nothing here falls back from one to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys

import certifi
import structlog

from enclave.config import EnclaveConfig, Mode
from enclave.egress import EgressProxy
from enclave.exchanges.client import ClientSettings, exchange_tls_context
from enclave.exchanges.polling import PollingManager
from enclave.keys import boot_keys
from enclave.kms import AwsCredentials, Boto3Kms, KmsPort
from enclave.measurement import simulated_pcrs
from enclave.nsm import DevNsm, NsmClient, NsmDevice
from enclave.nsm_simulator import NsmSimulator
from enclave.rpc_server import RpcServer
from enclave.service import EnclaveService, ServiceLimits
from shared.attestation import pcrs_to_json
from shared.io.transport import transport_from_config
from shared.logsetup import configure_logging

__all__ = ["EXPECTED_PCRS_FILE", "main", "run"]

log = structlog.get_logger("enclave.main")

EXPECTED_PCRS_FILE = "expected-pcrs.json"
"""Simulator only: PCR0/1/2 written under STATE_DIR for dev clients to pin."""


def _device(config: EnclaveConfig) -> NsmDevice:
    if config.mode is Mode.PRODUCTION:
        return DevNsm.open()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    pcrs = simulated_pcrs()
    simulator = NsmSimulator(config.state_dir, pcrs)
    expected = {index: pcrs[index] for index in (0, 1, 2)}
    path = config.state_dir / EXPECTED_PCRS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pcrs_to_json(expected), indent=1) + "\n")
    os.replace(tmp, path)
    return simulator


async def run(config: EnclaveConfig, *, stop: asyncio.Event | None = None) -> None:
    """Boot keys, serve RPC until ``stop`` is set (or SIGINT/SIGTERM)."""
    # No core dumps: a crash must not write credentials to disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nsm = NsmClient(_device(config))
    keys = boot_keys(nsm, with_pq=config.enable_pq)
    pcr0 = nsm.describe_pcr(0).data
    transport = transport_from_config(
        "vsock" if config.transport == "vsock" else "tcp-sim",
        dict(config.port_map) or None,
    )
    # Every outbound connection of the enclave goes through this loopback CONNECT
    # proxy, which enforces the enclave's own allowlist before the parent sees anything.
    egress = EgressProxy(
        transport,
        allowlist=config.egress_allowlist,
        parent_address=config.egress_address,
        port=config.proxy_port,
    )
    await egress.start()
    polling = PollingManager(
        settings=ClientSettings(
            # Production trusts the CA bundle shipped in the image (certifi); the
            # simulator trusts the fake exchanges' test CA instead (EXCHANGE_CA_FILE).
            ssl_context=exchange_tls_context(config.exchange_ca_file or certifi.where()),
            proxy_url=egress.url,
        )
    )
    kms_connector = None
    if config.sealing == "kms":
        kms_ca_file = config.kms_ca_file

        def kms_connector(credentials: AwsCredentials, region: str) -> KmsPort:
            # KMS is reached like the exchanges: through the enclave's own CONNECT proxy
            # (allowlist), the parent's egress, TLS verified and ended in here.
            return Boto3Kms(
                credentials=credentials,
                region=region,
                proxy_url=egress.url,
                ca_file=kms_ca_file,
            )

    service = EnclaveService(
        nsm=nsm,
        keys=keys,
        pcr0=pcr0,
        limits=ServiceLimits(
            max_ttl_seconds=config.max_ttl_seconds,
            min_ttl_seconds=config.min_ttl_seconds,
            pending_ttl_seconds=config.pending_ttl_seconds,
            max_envelope_age_seconds=config.max_envelope_age_seconds,
        ),
        polling=polling,
        kms=kms_connector,
        kms_key_id=config.kms_key_id,
    )
    server = RpcServer(service.handle)
    await server.start(transport, config.rpc_address)
    log.info(
        "enclave_ready",
        mode=config.mode.value,
        address=str(config.rpc_address),
        pcr0=pcr0.hex(),
        pq=keys.pq_public() is not None,
        egress_proxy=egress.url,
        sealing=config.sealing,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    async def purge_loop() -> None:
        while True:
            await asyncio.sleep(config.purge_interval_seconds)
            service.purge_expired()

    purger = asyncio.create_task(purge_loop())
    try:
        await stop.wait()
    finally:
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        await server.close()
        await polling.aclose()  # closes every exchange client before the tunnel goes
        await egress.close()
        service.close()  # wipe what Python lets us wipe: data key, key seed, salt keys
        log.info("enclave_stopped")


def main(argv: list[str] | None = None) -> int:
    """``python -m enclave``: configuration from the environment, then serve."""
    try:
        config = EnclaveConfig.from_env()
    except ValueError as exc:
        print(f"enclave: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging("enclave", level=config.log_level)
    asyncio.run(run(config))
    return 0
