"""Seed and credit the kernel RNG with NSM GetRandom bytes. Side: enclave (image entrypoint).

Run as root by eif/entrypoint.sh before the enclave service starts:

    python3 /opt/perf-aggregator/bin/seed_entropy.py [--device /dev/nsm] [--random /dev/random]

An enclave boots with no disk, no network and few interrupts, so the kernel CRNG may
be short of entropy early on. The NSM's GetRandom comes from the Nitro hypervisor.
The bytes go into the kernel pool with the ``RNDADDENTROPY`` ioctl (linux/random.h),
which both mixes them in and credits them (8 bits per byte, as the NSM is a hardware
source), the way rngd feeds a hardware RNG. A plain write() to /dev/random would mix
without crediting. The ioctl needs CAP_SYS_ADMIN, hence root, hence before the service
drops privileges.

Exit status 0 when at least ``SEED_BYTES`` bytes were credited; 1 with a message on any
failure (no device, an NSM error, the ioctl refused). The entrypoint then stops the boot:
fail closed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Final

from enclave.nsm import DevNsm, NsmClient, NsmError

__all__ = ["MAX_ROUNDS", "RNDADDENTROPY", "SEED_BYTES", "collect", "main", "rand_pool_info", "seed"]

RNDADDENTROPY: Final = 0x40085203
"""_IOW('R', 0x03, int[2]): add bytes to the input pool and credit entropy_count bits."""
SEED_BYTES: Final = 64
"""512 bits: well past the 256 the kernel CRNG needs to count itself initialised."""
MAX_ROUNDS: Final = 16
"""GetRandom calls at most; an NSM that keeps answering short is broken."""

Ioctl = Callable[[int, int, bytes], object]


def rand_pool_info(data: bytes) -> bytes:
    """``struct rand_pool_info {int entropy_count; int buf_size; __u32 buf[];}``."""
    return struct.pack("=ii", len(data) * 8, len(data)) + data


def collect(nsm: NsmClient, minimum: int = SEED_BYTES) -> bytes:
    """At least ``minimum`` bytes from GetRandom; ``NsmError`` if the NSM falls short."""
    collected = b""
    for _ in range(MAX_ROUNDS):
        collected += nsm.get_random()
        if len(collected) >= minimum:
            return collected
    raise RuntimeError(f"the NSM returned fewer than {minimum} random bytes")


def seed(nsm: NsmClient, random_fd: int, *, ioctl: Ioctl = fcntl.ioctl) -> int:
    """Credit NSM entropy to the kernel pool behind ``random_fd``; returns the bytes fed."""
    data = collect(nsm)
    ioctl(random_fd, RNDADDENTROPY, rand_pool_info(data))
    return len(data)


def main(argv: Sequence[str] | None = None, *, ioctl: Ioctl = fcntl.ioctl) -> int:
    """Open the NSM and /dev/random, seed, report on stderr."""
    parser = argparse.ArgumentParser(description="Credit NSM entropy to the kernel RNG.")
    parser.add_argument("--device", default="/dev/nsm", help="the NSM device")
    parser.add_argument("--random", default="/dev/random", help="the kernel RNG device")
    args = parser.parse_args(argv)
    try:
        device = DevNsm.open(args.device)
        try:
            random_fd = os.open(args.random, os.O_WRONLY | os.O_CLOEXEC)
            try:
                fed = seed(NsmClient(device), random_fd, ioctl=ioctl)
            finally:
                os.close(random_fd)
        finally:
            device.close()
    except (OSError, NsmError, RuntimeError) as exc:
        print(f"seed_entropy: failed: {exc}", file=sys.stderr)
        return 1
    print(f"seed_entropy: credited {fed * 8} bits from the NSM", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
