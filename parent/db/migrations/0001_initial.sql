-- 0001_initial: the parent's whole storage schema (side: parent, untrusted host).
--
-- The parent stores ONLY ciphertext and public data. Nothing in this schema can hold a
-- clear session id (sessions keep SHA-256 of it), an API key or a plaintext credential.
-- Encrypted columns are constrained to canonical base64 with length bounds so that a
-- bug that tries to write raw bytes, JSON or oversized blobs fails loudly.
--
-- Applied by parent/db/migrate.py inside one transaction; applied files are
-- checksummed, so never edit this file once released: add 0002_*.sql instead.

-- PostgreSQL < 15 lets PUBLIC create objects in schema public, which would let any
-- role (app_service included) run DDL or shadow the operators used by our CHECKs.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Roles are cluster-wide, so another database on the same cluster (or a concurrent
-- migration of one) may have created them already. Refuse a pre-existing role that is
-- more powerful than we intend rather than silently trusting it (fail closed).
DO $roles$
DECLARE
    r record;
BEGIN
    BEGIN
        CREATE ROLE app_service LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            NOREPLICATION NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    BEGIN
        CREATE ROLE operator_readonly NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
            NOREPLICATION NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('app_service', 'operator_readonly')
          AND (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)
    LOOP
        RAISE EXCEPTION 'role % exists with more privileges than perf-aggregator allows',
            r.rolname;
    END LOOP;
END
$roles$;

-- Statement and parameter logging off for the app role (DESIGN.md section 6): the app
-- only sends bound parameters, but a slow-query or error log line would still copy
-- them. log_error_verbosity = terse drops the DETAIL line of constraint errors, which
-- otherwise repeats the offending row ("Failing row contains (...)") in the server log;
-- log_min_error_statement = panic keeps the failing statement text out as well.
ALTER ROLE app_service SET log_statement = 'none';
ALTER ROLE app_service SET log_min_duration_statement = -1;
ALTER ROLE app_service SET log_parameter_max_length = 0;
ALTER ROLE app_service SET log_parameter_max_length_on_error = 0;
ALTER ROLE app_service SET log_error_verbosity = 'terse';
ALTER ROLE app_service SET log_min_error_statement = 'panic';

-- Canonical standard base64 with padding (RFC 4648 section 4), the CONTRACT wire form:
-- whole 4-character groups, and in a padded final group the unused low bits must be
-- zero (RFC 4648 section 3.5), exactly what shared.encoding.b64decode accepts.
-- search_path is pinned so that the ~ operator cannot be shadowed by another schema.
CREATE FUNCTION is_canonical_base64(value text) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT value ~ '^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$'
$fn$;

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'active'
                CONSTRAINT users_status_known CHECK (status IN ('active', 'disabled'))
);

CREATE TABLE sessions (
    id               bigserial PRIMARY KEY,
    -- SHA-256 of the session id; the clear id is a bearer token and never stored.
    session_hash     bytea NOT NULL
                     CONSTRAINT sessions_session_hash_key UNIQUE
                     CONSTRAINT sessions_session_hash_sha256
                         CHECK (octet_length(session_hash) = 32),
    user_id          bigint REFERENCES users (id) ON DELETE SET NULL,
    -- A ccxt exchange id: lowercase ASCII, no spaces, bounded.
    exchange         text NOT NULL
                     CONSTRAINT sessions_exchange_format
                         CHECK (exchange ~ '^[a-z][a-z0-9_]{0,31}$'),
    label            text NOT NULL
                     CONSTRAINT sessions_label_format
                         CHECK (char_length(label) <= 64 AND label !~ '[[:cntrl:]]'),
    status           text NOT NULL DEFAULT 'active'
                     CONSTRAINT sessions_status_known CHECK (status IN ('active')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    -- SHA-256 of the submitted envelope: a second submission of the same envelope is a
    -- replay (API: 409) and is refused by this unique key, atomically.
    envelope_digest  bytea NOT NULL
                     CONSTRAINT sessions_envelope_digest_key UNIQUE
                     CONSTRAINT sessions_envelope_digest_sha256
                         CHECK (octet_length(envelope_digest) = 32),
    -- Public data: base64 of a raw 32-byte Ed25519 public key (44 characters).
    owner_pub        text
                     CONSTRAINT sessions_owner_pub_ed25519
                         CHECK (owner_pub ~ '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$')
);
-- The TTL purge and count_active_sessions scan by expiry.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE credentials (
    -- One envelope per session.
    session_id     bigint PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    alg            text NOT NULL
                   CONSTRAINT credentials_alg_format CHECK (alg ~ '^[a-z0-9][a-z0-9+._-]{0,63}$'),
    -- Bounds leave room for larger KEM encapsulations (ML-KEM-768+X25519: 1120 bytes).
    ephemeral_pub  text NOT NULL
                   CONSTRAINT credentials_ephemeral_pub_base64
                       CHECK (is_canonical_base64(ephemeral_pub)
                              AND char_length(ephemeral_pub) BETWEEN 4 AND 2048),
    nonce          text NOT NULL
                   CONSTRAINT credentials_nonce_base64
                       CHECK (is_canonical_base64(nonce) AND char_length(nonce) BETWEEN 0 AND 64),
    -- HPKE algs carry an empty nonce (RFC 9180 derives it). 21848 base64 characters =
    -- 16 KiB of ciphertext, shared.envelope.MAX_CIPHERTEXT_BYTES.
    ciphertext     text NOT NULL
                   CONSTRAINT credentials_ciphertext_base64
                       CHECK (is_canonical_base64(ciphertext)
                              AND char_length(ciphertext) BETWEEN 4 AND 21848),
    tag            text NOT NULL
                   CONSTRAINT credentials_tag_base64
                       CHECK (is_canonical_base64(tag) AND char_length(tag) BETWEEN 4 AND 64),
    -- The envelope's AAD. Only the known non-secret keys, so nothing secret can be
    -- smuggled into a column the operator might one day be allowed to read.
    metadata       jsonb NOT NULL
                   CONSTRAINT credentials_metadata_shape
                       CHECK (jsonb_typeof(metadata) = 'object'
                              AND metadata - ARRAY['exchange', 'label', 'ttl', 'issued_at'] = '{}'::jsonb
                              AND octet_length(metadata::text) <= 4096),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE aggregates (
    id          bigserial PRIMARY KEY,
    session_id  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq         integer NOT NULL CONSTRAINT aggregates_seq_nonnegative CHECK (seq >= 0),
    payload     jsonb NOT NULL
                CONSTRAINT aggregates_payload_shape
                    CHECK (jsonb_typeof(payload) = 'object'
                           AND octet_length(payload::text) <= 1048576),
    -- Ed25519 is 88 characters; the bound leaves room for a post-quantum signature.
    signature   text NOT NULL
                CONSTRAINT aggregates_signature_base64
                    CHECK (is_canonical_base64(signature) AND char_length(signature) BETWEEN 4 AND 8192),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT aggregates_session_seq_key UNIQUE (session_id, seq)
);

CREATE TABLE merkle_logs (
    id                bigserial PRIMARY KEY,
    session_id        bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tree_size         bigint NOT NULL CONSTRAINT merkle_logs_tree_size_nonnegative
                          CHECK (tree_size >= 0),
    -- RFC 6962 uses SHA-256 node hashes.
    root_hash         bytea NOT NULL CONSTRAINT merkle_logs_root_hash_sha256
                          CHECK (octet_length(root_hash) = 32),
    signed_tree_head  jsonb NOT NULL CONSTRAINT merkle_logs_signed_tree_head_shape
                          CHECK (jsonb_typeof(signed_tree_head) = 'object'
                                 AND octet_length(signed_tree_head::text) <= 65536),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT merkle_logs_session_tree_size_key UNIQUE (session_id, tree_size)
);

CREATE TABLE ops_logs (
    id          bigserial PRIMARY KEY,
    -- NULL for operations that outlive their session (a revoke, a purge run).
    session_id  bigint REFERENCES sessions (id) ON DELETE CASCADE,
    op          text NOT NULL CONSTRAINT ops_logs_op_format CHECK (op ~ '^[a-z][a-z0-9_.]{0,31}$'),
    -- Printable ASCII only: request ids may come from clients and end up in log viewers.
    request_id  text CONSTRAINT ops_logs_request_id_format CHECK (request_id ~ '^[!-~]{1,128}$'),
    at          timestamptz NOT NULL DEFAULT now(),
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
                CONSTRAINT ops_logs_details_shape
                    CHECK (jsonb_typeof(details) = 'object' AND octet_length(details::text) <= 4096)
);
-- Revoke and purge delete by session (ON DELETE CASCADE looks rows up by session_id).
CREATE INDEX ops_logs_session_id_idx ON ops_logs (session_id);

CREATE TABLE records (
    id          uuid PRIMARY KEY,
    session_id  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    label       text NOT NULL
                CONSTRAINT records_label_format
                    CHECK (char_length(label) <= 128 AND label !~ '[[:cntrl:]]'),
    -- Sealed by the enclave; 131072 base64 characters = 96 KiB sealed.
    sealed      text NOT NULL
                CONSTRAINT records_sealed_base64
                    CHECK (is_canonical_base64(sealed) AND char_length(sealed) BETWEEN 4 AND 131072),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX records_session_id_created_at_idx ON records (session_id, created_at);

-- Privileges. Explicit per table (no ALTER DEFAULT PRIVILEGES) so that a table added
-- by a later migration is invisible to both roles until that migration grants it.
-- Deletes of a session's rows go through ON DELETE CASCADE (foreign-key actions run
-- as the table owner), so app_service needs DELETE on sessions only.
REVOKE ALL ON users, sessions, credentials, aggregates, merkle_logs, ops_logs, records
    FROM PUBLIC;

GRANT SELECT, INSERT, DELETE ON sessions TO app_service;
GRANT SELECT, INSERT ON credentials, aggregates, merkle_logs, records TO app_service;
-- ops_logs is append-only for the app: it writes audit rows and never reads them back.
GRANT INSERT ON ops_logs TO app_service;
GRANT USAGE ON SEQUENCE sessions_id_seq, aggregates_id_seq, merkle_logs_id_seq, ops_logs_id_seq
    TO app_service;

-- The operator sees public data only: never credentials, never sealed record bodies.
GRANT SELECT ON users, sessions, aggregates, merkle_logs, ops_logs TO operator_readonly;
GRANT SELECT (id, session_id, label, created_at) ON records TO operator_readonly;
-- schema_migrations is created by migrate.py before any migration runs.
GRANT SELECT ON schema_migrations TO operator_readonly;
