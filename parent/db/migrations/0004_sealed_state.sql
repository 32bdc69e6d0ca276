-- 0004_sealed_state: what a restarted enclave, or a replica with the same PCRs, needs to
-- continue every live session (side: parent, untrusted host). DESIGN.md section 8.
--
-- The enclave seals, the parent stores. Nothing here opens without the KMS data key, and
-- KMS releases that key only to an enclave whose attestation satisfies the key policy
-- (PCR0), encrypted to a key that never leaves that enclave. The parent reads only the
-- clear, authenticated headers of the blobs (shared/sealed_state.py):
--
--     magic (4) || session_hash (32) || version (8, big-endian) || expires_at (8, big-endian)
--
-- and the CHECKs below hold the columns to those headers, so a bug that files one
-- session's state under another session, or a newer version under an older number,
-- fails loudly instead of being restored into the wrong session.

-- The enclave's identity: the KMS-wrapped data key (CiphertextBlob) and the enclave's
-- service keys sealed under it. Exactly one row: every replica with the same PCRs
-- shares one identity, so clients see the same keys whichever replica answers. The
-- row is written once (the first enclave to start creates it; a parent that loses the
-- race to store its enclave's new identity adopts the stored one) and never updated.
CREATE TABLE enclave_identity (
    singleton    boolean NOT NULL DEFAULT true
                 CONSTRAINT enclave_identity_pkey PRIMARY KEY
                 CONSTRAINT enclave_identity_single_row CHECK (singleton),
    -- The KMS key id, ARN or alias the data key was generated under (public).
    key_id       text NOT NULL
                 CONSTRAINT enclave_identity_key_id_format
                     CHECK (char_length(key_id) BETWEEN 1 AND 2048
                            AND key_id !~ '[[:cntrl:][:space:]]'),
    -- KMS bounds a CiphertextBlob at 6144 bytes (API reference, Decrypt).
    wrapped_key  bytea NOT NULL
                 CONSTRAINT enclave_identity_wrapped_key_size
                     CHECK (octet_length(wrapped_key) BETWEEN 1 AND 6144),
    -- magic || nonce || AES-GCM(key seed): a few hundred bytes; the bound leaves room.
    sealed_keys  bytea NOT NULL
                 CONSTRAINT enclave_identity_sealed_keys_size
                     CHECK (octet_length(sealed_keys) BETWEEN 32 AND 16384),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The newest sealed state of each live session. Keyed by the session hash and tied to
-- the sessions row, so revoke and the TTL purge delete it in their own statement
-- (ON DELETE CASCADE): a revoked session leaves nothing here to restore.
CREATE TABLE sealed_sessions (
    session_hash  bytea NOT NULL
                  CONSTRAINT sealed_sessions_pkey PRIMARY KEY
                  CONSTRAINT sealed_sessions_session_hash_fkey
                      REFERENCES sessions (session_hash) ON DELETE CASCADE,
    -- Grows by one per sealing; the store keeps the highest (an older one never wins).
    version       bigint NOT NULL
                  CONSTRAINT sealed_sessions_version_nonnegative CHECK (version >= 0),
    expires_at    timestamptz NOT NULL,
    -- header (52) + nonce (12) + tag (16) at least; shared.sealed_state.MAX_SEALED_SIZE
    -- (3 MiB) at most, so any stored state fits one RPC frame on restore.
    sealed        bytea NOT NULL
                  CONSTRAINT sealed_sessions_sealed_size
                      CHECK (octet_length(sealed) BETWEEN 80 AND 3145728),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- The columns are the blob's own header (int8send is big-endian, as the header is).
    CONSTRAINT sealed_sessions_header_matches CHECK (
        substring(sealed FROM 1 FOR 4) = 'PAS1'::bytea
        AND substring(sealed FROM 5 FOR 32) = session_hash
        AND substring(sealed FROM 37 FOR 8) = int8send(version)
        AND substring(sealed FROM 45 FOR 8) = int8send(extract(epoch FROM expires_at)::bigint)
    )
);
-- Ciphertext does not compress: skip pglz's attempt on every write (still TOASTed).
ALTER TABLE sealed_sessions ALTER COLUMN sealed SET STORAGE EXTERNAL;

-- The enclave's sealed revocation list (revoked session hashes with their expiry), so a
-- restore from an old backup cannot bring a revoked session back. One row; the store
-- keeps the highest version, as the enclave does.
CREATE TABLE sealed_revocations (
    singleton   boolean NOT NULL DEFAULT true
                CONSTRAINT sealed_revocations_pkey PRIMARY KEY
                CONSTRAINT sealed_revocations_single_row CHECK (singleton),
    version     bigint NOT NULL
                CONSTRAINT sealed_revocations_version_nonnegative CHECK (version >= 0),
    sealed      bytea NOT NULL
                CONSTRAINT sealed_revocations_sealed_size
                    CHECK (octet_length(sealed) BETWEEN 80 AND 3145728),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Magic "PAR1", the all-zero session hash and the version, as in the header.
    CONSTRAINT sealed_revocations_header_matches CHECK (
        substring(sealed FROM 1 FOR 4) = 'PAR1'::bytea
        AND substring(sealed FROM 5 FOR 32) = decode(repeat('00', 32), 'hex')
        AND substring(sealed FROM 37 FOR 8) = int8send(version)
    )
);
ALTER TABLE sealed_revocations ALTER COLUMN sealed SET STORAGE EXTERNAL;

-- Privileges, least first. The identity is written once: no UPDATE, no DELETE. Sealed
-- states and the revocation list are upserted by version, so the app may UPDATE only
-- the columns an upsert writes; their rows leave through ON DELETE CASCADE (sessions)
-- or never (the list), so no DELETE either.
REVOKE ALL ON enclave_identity, sealed_sessions, sealed_revocations FROM PUBLIC;
GRANT SELECT, INSERT ON enclave_identity TO app_service;
GRANT SELECT, INSERT ON sealed_sessions TO app_service;
GRANT UPDATE (version, expires_at, sealed, updated_at) ON sealed_sessions TO app_service;
GRANT SELECT, INSERT ON sealed_revocations TO app_service;
GRANT UPDATE (version, sealed, updated_at) ON sealed_revocations TO app_service;

-- The operator sees metadata only. The blobs would not open without the enclave anyway,
-- but a reader that cannot copy them cannot replay them elsewhere either.
GRANT SELECT (key_id, created_at) ON enclave_identity TO operator_readonly;
GRANT SELECT (session_hash, version, expires_at, updated_at) ON sealed_sessions
    TO operator_readonly;
GRANT SELECT (version, updated_at) ON sealed_revocations TO operator_readonly;
