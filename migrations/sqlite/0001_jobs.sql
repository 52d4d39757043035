-- Jobs, their layers, their per-step records, and uploaded corpora.
-- Kept to SQL that SQLite and PostgreSQL both accept.

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,           -- UUIDv7: sorts by creation time
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    spec        TEXT NOT NULL,              -- the JobSpec as JSON, defaults filled in
    created_at  TEXT NOT NULL,              -- RFC 3339, UTC
    started_at  TEXT,
    finished_at TEXT,
    step        BIGINT NOT NULL DEFAULT 0,
    total_steps BIGINT NOT NULL,
    device      TEXT,
    loss        DOUBLE PRECISION,
    error       TEXT
);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE layers (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx    INTEGER NOT NULL,
    name   TEXT NOT NULL,
    shape  TEXT NOT NULL,                   -- JSON array of dimensions
    numel  BIGINT NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE steps (
    job_id            TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step              BIGINT NOT NULL,
    loss              DOUBLE PRECISION,     -- NULL when not finite
    grad_norm         DOUBLE PRECISION,
    grad_norm_clipped DOUBLE PRECISION,
    clip_coef         DOUBLE PRECISION,
    lr                DOUBLE PRECISION NOT NULL,
    skipped           BOOLEAN NOT NULL,
    PRIMARY KEY (job_id, step)
);

CREATE TABLE corpora (
    id         TEXT PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    vocab_size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
