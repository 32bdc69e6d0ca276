"""Generate the KMS key policy that releases the sealing key only to the measured enclave.

Side: operator tooling (any host), never the enclave.

    python -m scripts.kms_policy --role-arn arn:aws:iam::111122223333:role/perf-aggregator \\
        [--measurements eif/measurements.json ...] [--admin-arn ARN] [--immutable] \\
        [--output policy.json]

(``scripts/kms-policy`` is the same command.) The PCR values come from
``eif/measurements.json``, read exactly as clients read it (``scripts.measurements.load``),
so the key and the clients pin the same image. The policy, in AWS's documented terms
(KMS developer guide, "Condition keys for Nitro Enclaves"):

1. ``KeyAdministration``: the admin principal (default: the account root) manages the key
   but is granted no cryptographic operation. ``--immutable`` also withholds
   ``kms:PutKeyPolicy``, so nobody can ever point the key at another image (create the
   key with ``--bypass-policy-lockout-safety-check``; upgrades then need the next image's
   PCRs listed up front with a second ``--measurements``).
2. ``EnclaveUseWithAttestation``: the instance role may call ``kms:Decrypt`` and
   ``kms:GenerateDataKey`` only with a Recipient attestation document whose
   ``kms:RecipientAttestation:ImageSha384`` (= PCR0) and ``kms:RecipientAttestation:PCR0``,
   ``PCR1``, ``PCR2`` (and ``PCR8`` for a signed image) equal the measurements
   (``StringEqualsIgnoreCase``). KMS then encrypts the answer to the enclave's key.
3. ``DenyKeyUseWithoutAttestation``: an explicit Deny, for every principal, of the
   operations that return key material when the request carries no attestation document
   (``Null`` on ``kms:RecipientAttestation:ImageSha384``). An explicit Deny beats any
   Allow from IAM policies or grants, so the parent's own credentials cannot decrypt.
4. ``DenyKeyUseByOtherImages``: the same operations are denied for an attestation from
   any other image (``StringNotEqualsIgnoreCase`` on ImageSha384), so a debug-mode or
   rebuilt enclave holding the instance role gets nothing either.
5. ``DenyReEncryptAndGrants``: ``kms:ReEncrypt*`` (it takes no Recipient, and would move
   ciphertext under a key the operator controls) and ``kms:CreateGrant`` are denied to all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from scripts.measurements import SIGNING_PCR, MeasurementError, load

__all__ = [
    "ATTESTED_ACTIONS",
    "CONDITION_PREFIX",
    "IMAGE_SHA384",
    "attestation_conditions",
    "key_policy",
    "main",
]

CONDITION_PREFIX: Final = "kms:RecipientAttestation:"
IMAGE_SHA384: Final = CONDITION_PREFIX + "ImageSha384"
ATTESTED_ACTIONS: Final = ("kms:Decrypt", "kms:GenerateDataKey")
"""What the enclave does with the key: unwrap the sealing data key, or make a new one."""
_KEY_MATERIAL_ACTIONS: Final = (
    "kms:Decrypt",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
)
_ADMIN_ACTIONS: Final = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RevokeGrant",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)
_ROLE_ARN = re.compile(r"arn:(aws|aws-cn|aws-us-gov):iam::([0-9]{12}):role/[\w+=,.@/-]{1,512}")
_PRINCIPAL_ARN = re.compile(r"arn:(aws|aws-cn|aws-us-gov):iam::([0-9]{12}):[\w+=,.@/:-]{1,512}")
_ROOT: Final = Path(__file__).resolve().parents[1]


def attestation_conditions(images: Sequence[Mapping[int, bytes]]) -> dict[str, str | list[str]]:
    """``StringEqualsIgnoreCase`` keys for one image (strings) or a rollover set (lists)."""
    if not images:
        raise MeasurementError("no measurements given")
    signed = {SIGNING_PCR in pcrs for pcrs in images}
    if len(signed) != 1:
        raise MeasurementError("mixing signed and unsigned images in one policy")
    keys: dict[str, list[str]] = {IMAGE_SHA384: []}
    for pcrs in images:
        values = [(IMAGE_SHA384, pcrs[0])]
        values += [(f"{CONDITION_PREFIX}PCR{index}", value) for index, value in pcrs.items()]
        for key, value in values:
            bucket = keys.setdefault(key, [])
            if value.hex() not in bucket:
                bucket.append(value.hex())
    return {key: values[0] if len(images) == 1 else values for key, values in keys.items()}


def key_policy(
    images: Sequence[Mapping[int, bytes]],
    *,
    role_arn: str,
    admin_arn: str | None = None,
    immutable: bool = False,
) -> dict[str, Any]:
    """The key policy document (see the module docstring for each statement)."""
    role = _ROLE_ARN.fullmatch(role_arn)
    if role is None:
        raise ValueError("--role-arn must be an IAM role ARN (arn:aws:iam::<account>:role/...)")
    partition, account = role.group(1), role.group(2)
    admin = admin_arn or f"arn:{partition}:iam::{account}:root"
    if _PRINCIPAL_ARN.fullmatch(admin) is None:
        raise ValueError("--admin-arn must be an IAM principal ARN")
    conditions = attestation_conditions(images)
    admin_actions = [a for a in _ADMIN_ACTIONS if not (immutable and a == "kms:PutKeyPolicy")]
    return {
        "Version": "2012-10-17",
        "Id": "perf-aggregator-enclave-sealing-key",
        "Statement": [
            {
                "Sid": "KeyAdministration",
                "Effect": "Allow",
                "Principal": {"AWS": admin},
                "Action": admin_actions,
                "Resource": "*",
            },
            {
                "Sid": "EnclaveUseWithAttestation",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": list(ATTESTED_ACTIONS),
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": conditions},
            },
            {
                "Sid": "DenyKeyUseWithoutAttestation",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": list(_KEY_MATERIAL_ACTIONS),
                "Resource": "*",
                "Condition": {"Null": {IMAGE_SHA384: "true"}},
            },
            {
                "Sid": "DenyKeyUseByOtherImages",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": list(_KEY_MATERIAL_ACTIONS),
                "Resource": "*",
                "Condition": {
                    "StringNotEqualsIgnoreCase": {IMAGE_SHA384: conditions[IMAGE_SHA384]}
                },
            },
            {
                "Sid": "DenyReEncryptAndGrants",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": ["kms:CreateGrant", "kms:ReEncrypt*"],
                "Resource": "*",
            },
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or write) the key policy JSON; exit 1 with a message on any refusal."""
    parser = argparse.ArgumentParser(
        prog="kms-policy",
        description="Generate the KMS key policy for the measured enclave image.",
    )
    parser.add_argument(
        "--measurements",
        type=Path,
        action="append",
        help="pinned PCR file (default eif/measurements.json); repeat to allow a rollover",
    )
    parser.add_argument("--role-arn", required=True, help="IAM role of the parent instance")
    parser.add_argument("--admin-arn", help="key administrator (default: the account root)")
    parser.add_argument(
        "--immutable", action="store_true", help="withhold kms:PutKeyPolicy from everyone"
    )
    parser.add_argument("--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    paths: list[Path] = args.measurements or [_ROOT / "eif" / "measurements.json"]
    try:
        policy = key_policy(
            [load(path) for path in paths],
            role_arn=args.role_arn,
            admin_arn=args.admin_arn,
            immutable=args.immutable,
        )
    except ValueError as exc:  # MeasurementError included
        print(f"kms-policy: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(policy, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        temporary = args.output.with_name(args.output.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
