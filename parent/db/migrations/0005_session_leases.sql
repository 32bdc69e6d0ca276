-- 0005_session_leases: which replica polls (and alone writes) each session (side:
-- parent, untrusted host). DESIGN.md section 8, issue 7 item 4.
--
-- N parent+enclave pairs share this database. Each live session has one lease: the
-- replica named in it restores the session into its enclave, polls it, and is the only
-- one that stores its sealed state; every other replica forwards that session's
-- requests to ``holder_url``. A lease lasts a few seconds and is renewed by its holder
-- (parent/leases.py); a replica that dies stops renewing, and once ``expires_at`` has
-- passed another replica takes the lease over (SELECT ... FOR UPDATE SKIP LOCKED, so
-- two replicas never take the same row in one sweep). Times are the database's own
-- clock (now()), so the replicas' clocks need not agree.
--
-- A lease row goes with its session (ON DELETE CASCADE): revoke and the TTL purge
-- delete it in their own statement. Nothing here is secret: holders are replica names
-- and URLs are the parents' own public HTTPS addresses.
CREATE TABLE session_leases (
    session_hash  bytea NOT NULL
                  CONSTRAINT session_leases_pkey PRIMARY KEY
                  CONSTRAINT session_leases_session_hash_fkey
                      REFERENCES sessions (session_hash) ON DELETE CASCADE,
    -- REPLICA_ID of the holder (parent/config.py).
    holder        text NOT NULL
                  CONSTRAINT session_leases_holder_format
                      CHECK (char_length(holder) BETWEEN 1 AND 128
                             AND holder !~ '[[:cntrl:][:space:]]'),
    -- REPLICA_URL of the holder: where the other parents forward this session's requests.
    holder_url    text NOT NULL
                  CONSTRAINT session_leases_holder_url_format
                      CHECK (char_length(holder_url) BETWEEN 9 AND 512
                             AND holder_url ~ '^https://'
                             AND holder_url !~ '[[:cntrl:][:space:]]'),
    expires_at    timestamptz NOT NULL,
    acquired_at   timestamptz NOT NULL DEFAULT now()
);
-- The sweep looks for expired leases, soonest first; renewals look up a holder's rows.
CREATE INDEX session_leases_expires_at_idx ON session_leases (expires_at);
CREATE INDEX session_leases_holder_idx ON session_leases (holder);

-- The credential the parents present to each other when one forwards a request to the
-- lease holder (header X-Replica-Forward), so that a client cannot pass for a parent
-- (forwarded requests are not rate limited twice and never forwarded again). Made once
-- here from the server's strong random source (three gen_random_uuid(), 366 random
-- bits from pg_strong_random, hashed to 32 bytes):
-- every parent of the deployment shares this database, hence the secret, and nobody
-- has to configure it. Never updated, never deleted.
CREATE TABLE replica_secret (
    singleton   boolean NOT NULL DEFAULT true
                CONSTRAINT replica_secret_pkey PRIMARY KEY
                CONSTRAINT replica_secret_single_row CHECK (singleton),
    secret      bytea NOT NULL
                CONSTRAINT replica_secret_size CHECK (octet_length(secret) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO replica_secret (secret)
VALUES (sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
               || uuid_send(gen_random_uuid())));

-- Privileges, least first. A lease is created (INSERT, with its session or on takeover
-- of a session that has none), renewed and handed over (UPDATE of the holder columns
-- only) and leaves with its session (ON DELETE CASCADE): no DELETE. The secret is read
-- only.
REVOKE ALL ON session_leases, replica_secret FROM PUBLIC;
GRANT SELECT, INSERT ON session_leases TO app_service;
GRANT UPDATE (holder, holder_url, expires_at, acquired_at) ON session_leases TO app_service;
GRANT SELECT ON replica_secret TO app_service;

-- The operator may see every lease (nothing in it is secret), never the secret.
GRANT SELECT ON session_leases TO operator_readonly;
