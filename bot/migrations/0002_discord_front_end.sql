-- 0002: what the Discord front end (issue 6) needs to answer reactions and buttons after a restart.
--
-- generations already holds every parameter (params JSON) and the seeds; here each image gets its own row, so
-- "variations of image 3" and "the PNG of image 3" need no file-name guessing, and each guild gets its settings.

ALTER TABLE generations ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE generations ADD COLUMN error TEXT;
-- What asked for it: a slash command, a reaction or button on an earlier generation (parent_id), a restart.
ALTER TABLE generations ADD COLUMN origin TEXT NOT NULL DEFAULT 'imagine';
ALTER TABLE generations ADD COLUMN parent_id INTEGER REFERENCES generations (id) ON DELETE SET NULL;

CREATE TABLE generation_images (
    generation_id INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,          -- 0-based position in the request (image 1️⃣ is idx 0)
    seed          INTEGER NOT NULL,
    subseed       INTEGER NOT NULL,
    path          TEXT NOT NULL,             -- the full-quality PNG with its infotext, under paths.outputs
    infotext      TEXT NOT NULL,
    PRIMARY KEY (generation_id, idx)
);

-- Per-guild overrides of the [guild] defaults in config.toml (JSON object; absent keys use the defaults).
CREATE TABLE guild_settings (
    guild_id  INTEGER PRIMARY KEY,
    settings  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings))
);
