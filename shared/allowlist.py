"""The egress allowlist: which host:port the enclave may reach. Side: parent and enclave.

Sans-IO. Both ends of the egress tunnel build the same ``Allowlist`` and check
every CONNECT against it (DESIGN.md section 3): the enclave so that a denied host
never leaves the enclave (the user's guarantee, fixed by the measured image), the
parent so that the operator decides what its instance connects to.

Text form, as in ``EGRESS_ALLOWLIST``::

    api.binance.com:443,api.kraken.com:443,*.binance.com:443

* Entries are ``host:port`` separated by commas; whitespace around entries is
  ignored; the port is always required (there is no "any port").
* Hosts are compared exactly and case-insensitively, after the strict host
  grammar of ``shared.connect`` (DNS names or dotted-quad IPv4, no trailing dot),
  so a name spelt differently by a client cannot slip past a match.
* ``*.suffix:port`` matches exactly one extra DNS label: ``*.binance.com:443``
  allows ``fapi.binance.com:443`` but neither ``binance.com:443`` nor
  ``a.b.binance.com:443``, and never an IPv4 address. The suffix needs at least
  two labels (``*.com`` is refused). Wildcards exist for exchanges that spread one
  API over sibling hosts (Binance's api/fapi/dapi); the default list uses none.
* An empty list denies everything (fail closed).

``match`` returns the entry that allowed a target, in its text form. Metrics use
it as a label, so label values come only from this bounded, operator-written set,
never from what a client asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.connect import ConnectHeadError, normalize_host, parse_authority

__all__ = [
    "DEFAULT_EXCHANGE_HOSTS",
    "Allowlist",
    "default_allowlist",
    "kms_host",
]

DEFAULT_EXCHANGE_HOSTS = ("api.binance.com:443", "api.kraken.com:443", "api.coinbase.com:443")
"""The exchange REST hosts of the production default list."""

# AWS region names: us-east-1, eu-central-2, us-gov-west-1, ap-southeast-4, ...
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+){1,2}-[1-9][0-9]?")


def kms_host(aws_region: str) -> str:
    """The KMS endpoint entry for a region: ``kms.<region>.amazonaws.com:443``."""
    if not _REGION.fullmatch(aws_region):
        raise ValueError("not an AWS region name (e.g. us-east-1)")
    return f"kms.{aws_region}.amazonaws.com:443"


@dataclass(frozen=True, slots=True)
class Allowlist:
    """A set of allowed ``host:port`` entries (exact, or one-label ``*.suffix``)."""

    exact: frozenset[tuple[str, int]]
    wildcard: frozenset[tuple[str, int]]  # (suffix without "*.", port)

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """Parse ``"host:port,*.suffix:port,..."``; ``ValueError`` names the bad entry."""
        exact: set[tuple[str, int]] = set()
        wildcard: set[tuple[str, int]] = set()
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                if item.startswith("*."):
                    suffix, port = parse_authority(item[2:])
                    # Two labels at least, the last one a name: never an IPv4 address.
                    if "." not in suffix or not suffix.rsplit(".", 1)[1][0].isalpha():
                        raise ConnectHeadError("wildcard suffix needs two DNS labels")
                    wildcard.add((suffix, port))
                else:
                    exact.add(parse_authority(item))
            except ConnectHeadError as exc:
                raise ValueError(f"bad allowlist entry {item!r}: {exc}") from None
        return cls(exact=frozenset(exact), wildcard=frozenset(wildcard))

    def match(self, host: str, port: int) -> str | None:
        """The entry (text form) that allows ``host:port``, or None when it is denied."""
        try:
            name = normalize_host(host)
        except ConnectHeadError:
            return None
        if (name, port) in self.exact:
            return f"{name}:{port}"
        _first, dot, suffix = name.partition(".")
        # One label exactly: the first label is cut off, the rest must equal the
        # suffix. An IPv4 address never matches: a wildcard suffix ends in a letter.
        if dot and (suffix, port) in self.wildcard:
            return f"*.{suffix}:{port}"
        return None

    def is_allowed(self, host: str, port: int) -> bool:
        """True when ``host:port`` matches an entry."""
        return self.match(host, port) is not None

    @property
    def entries(self) -> tuple[str, ...]:
        """Every entry in text form, sorted: the bounded set of metric label values."""
        return tuple(
            sorted(
                [f"{host}:{port}" for host, port in self.exact]
                + [f"*.{suffix}:{port}" for suffix, port in self.wildcard]
            )
        )

    def __str__(self) -> str:
        return ",".join(self.entries)

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcard)


def default_allowlist(aws_region: str | None = None) -> Allowlist:
    """The production default: Binance, Kraken, Coinbase, and KMS in ``aws_region``."""
    entries = list(DEFAULT_EXCHANGE_HOSTS)
    if aws_region is not None:
        entries.append(kms_host(aws_region))
    return Allowlist.parse(",".join(entries))
