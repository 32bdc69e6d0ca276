-- 0003_transparency_log: the enclave-signed per-session log (shared/translog.py).
--
-- Entries go to ops_logs, signed tree heads to merkle_logs, both keyed by the session
-- hash and not by the sessions row: a log outlives its session (revoke and TTL purge
-- delete the session, its credentials and reports), so whoever holds the session id
-- can still see what happened to it, the revoke included. Rows hold public data only:
-- entries and heads are what GET /api/logs/{session_id} serves.

-- One transparency entry per (session_hash, log_index); the parent's own audit rows
-- (session_id, op, request_id, details) leave the three new columns NULL.
ALTER TABLE ops_logs
    ADD COLUMN session_hash bytea
        CONSTRAINT ops_logs_session_hash_sha256 CHECK (octet_length(session_hash) = 32),
    ADD COLUMN log_index bigint
        CONSTRAINT ops_logs_log_index_nonnegative CHECK (log_index >= 0),
    -- The entry's RFC 8785 bytes exactly as the enclave hashed them (the Merkle leaf).
    ADD COLUMN entry text
        CONSTRAINT ops_logs_entry_size CHECK (octet_length(entry) BETWEEN 2 AND 4096),
    ADD CONSTRAINT ops_logs_transparency_entry_shape CHECK (
        (session_hash IS NULL AND log_index IS NULL AND entry IS NULL)
        OR (session_hash IS NOT NULL AND log_index IS NOT NULL AND entry IS NOT NULL
            AND session_id IS NULL)
    );
CREATE UNIQUE INDEX ops_logs_session_hash_log_index_key
    ON ops_logs (session_hash, log_index) WHERE log_index IS NOT NULL;

-- Nothing wrote merkle_logs before this migration (its rows were tied to the sessions
-- row, which a revoke deletes): recreate it keyed by the session hash.
DROP TABLE merkle_logs;
CREATE TABLE merkle_logs (
    id                bigserial PRIMARY KEY,
    session_hash      bytea NOT NULL CONSTRAINT merkle_logs_session_hash_sha256
                          CHECK (octet_length(session_hash) = 32),
    tree_size         bigint NOT NULL CONSTRAINT merkle_logs_tree_size_nonnegative
                          CHECK (tree_size >= 0),
    -- RFC 6962 uses SHA-256 node hashes.
    root_hash         bytea NOT NULL CONSTRAINT merkle_logs_root_hash_sha256
                          CHECK (octet_length(root_hash) = 32),
    -- {"payload": {...}, "signature": base64}: shared.translog.SignedTreeHead.
    signed_tree_head  jsonb NOT NULL CONSTRAINT merkle_logs_signed_tree_head_shape
                          CHECK (jsonb_typeof(signed_tree_head) = 'object'
                                 AND octet_length(signed_tree_head::text) <= 4096),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The first head signed at a size is kept; later ones at the same size add nothing.
    CONSTRAINT merkle_logs_session_hash_tree_size_key UNIQUE (session_hash, tree_size)
);

REVOKE ALL ON merkle_logs FROM PUBLIC;
GRANT SELECT, INSERT ON merkle_logs TO app_service;
GRANT USAGE ON SEQUENCE merkle_logs_id_seq TO app_service;
GRANT SELECT ON merkle_logs TO operator_readonly;
-- The app serves transparency entries back; the audit details stay write-only.
GRANT SELECT (session_hash, log_index, entry) ON ops_logs TO app_service;
