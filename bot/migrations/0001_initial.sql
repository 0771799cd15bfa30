-- 0001: the initial schema. Later issues add numbered files; never edit a migration that has shipped.
--
-- Conventions (why): Discord snowflakes fit SQLite's 64-bit INTEGER; timestamps are ISO-8601 UTC text,
-- which sorts and compares correctly as text and reads well in the sqlite3 shell; JSON columns are TEXT
-- checked with json_valid() so a bad write fails at once instead of poisoning later reads.
-- Migrations run inside a transaction managed by bot/db.py: no BEGIN/COMMIT in these files.

CREATE TABLE generations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id        INTEGER,                       -- NULL in DMs
    channel_id      INTEGER,
    user_id         INTEGER NOT NULL,
    message_id      INTEGER,                       -- the result message, once posted
    prompt          TEXT NOT NULL,
    negative_prompt TEXT NOT NULL DEFAULT '',
    params          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    seeds           TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(seeds)),
    status          TEXT NOT NULL DEFAULT 'queued', -- queued | running | done | failed | cancelled
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at     TEXT
);
CREATE INDEX generations_user ON generations (user_id, created_at);
CREATE INDEX generations_message ON generations (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX generations_status ON generations (status);

-- Embeddings, hypernetworks (and later LoRA-like adapters): global ones are installed by an owner, guild ones
-- belong to one server. guild_id is NULL exactly for global scope; because SQLite treats NULLs as distinct in
-- UNIQUE constraints, a partial index makes global names unique too.
CREATE TABLE adapters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,                     -- embedding | hypernetwork | ...
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('global', 'guild')),
    guild_id    INTEGER,
    owner_id    INTEGER,
    file        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((scope = 'global') = (guild_id IS NULL)),
    UNIQUE (scope, guild_id, kind, name)
);
CREATE UNIQUE INDEX adapters_global_name ON adapters (kind, name) WHERE scope = 'global';

-- Per-user defaults. guild_id 0 means "everywhere" (a primary key column must not be NULL: SQLite would let
-- NULL duplicates through).
CREATE TABLE user_settings (
    user_id   INTEGER NOT NULL,
    guild_id  INTEGER NOT NULL DEFAULT 0,
    settings  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
    PRIMARY KEY (user_id, guild_id)
);

-- Long-running work that must survive a restart (training, batch jobs).
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    owner_id    INTEGER,
    guild_id    INTEGER,
    state       TEXT NOT NULL DEFAULT 'queued',   -- queued | running | done | failed | cancelled
    payload     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX jobs_state ON jobs (state);
