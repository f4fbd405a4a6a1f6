-- gatehouse schema v1 (SQLite). Timestamps are milliseconds since the Unix epoch.

-- Small settings and facts about this installation.
CREATE TABLE gatehouse_meta (
    key            TEXT    NOT NULL PRIMARY KEY,
    value          TEXT    NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);

-- Static-site releases: one row per uploaded build of a slot (e.g. "frontend").
CREATE TABLE releases (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    slot           TEXT    NOT NULL,
    release_id     TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    size_bytes     INTEGER NOT NULL CHECK (size_bytes >= 0),
    file_count     INTEGER NOT NULL CHECK (file_count >= 0),
    UNIQUE (slot, release_id)
);
CREATE INDEX releases_by_age ON releases (slot, created_at_ms DESC, id DESC);

-- The active release of each slot. One row per slot makes "exactly one active release"
-- a property of the schema, and activation a single atomic upsert; the foreign key keeps
-- the active release from being deleted.
CREATE TABLE release_slots (
    slot               TEXT    NOT NULL PRIMARY KEY,
    active_release_id  TEXT    NOT NULL,
    activated_at_ms    INTEGER NOT NULL,
    FOREIGN KEY (slot, active_release_id) REFERENCES releases (slot, release_id)
);

-- TLS certificates shared by all instances (ACME or uploaded).
CREATE TABLE tls_certificates (
    name           TEXT    NOT NULL PRIMARY KEY,
    chain_pem      TEXT    NOT NULL,
    key_pem        TEXT    NOT NULL,
    not_after_ms   INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);

-- ACME accounts, one per directory URL.
CREATE TABLE acme_accounts (
    directory_url  TEXT    NOT NULL PRIMARY KEY,
    account_url    TEXT    NOT NULL,
    credentials    TEXT    NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);

-- Leases: named locks with an owner and an expiry, e.g. "only one instance orders the
-- certificate for app.example.com".
CREATE TABLE leases (
    name           TEXT    NOT NULL PRIMARY KEY,
    holder         TEXT    NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
