-- The schema of the SQLite migrations 0001 to 0009 (migrations/sqlite/), in PostgreSQL's
-- types: BIGINT for every integer (the store reads them as 64-bit), BYTEA for BLOB,
-- TIMESTAMPTZ for times. Later migrations take the next free number in both folders.
-- Identifiers sort byte by byte, as in SQLite, whatever the database's collation.

CREATE TABLE jobs (
    id              TEXT COLLATE "C" PRIMARY KEY,   -- UUIDv7: sorts by creation time
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    spec            TEXT NOT NULL,                  -- the JobSpec as JSON, defaults filled in
    created_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    step            BIGINT NOT NULL DEFAULT 0,
    total_steps     BIGINT NOT NULL,
    device          TEXT,
    loss            DOUBLE PRECISION,
    error           TEXT,
    diagnosis       TEXT,                           -- JSON, the latest diagnosis
    dropped_reports BIGINT NOT NULL DEFAULT 0,
    resumed_from    BIGINT,                         -- the checkpoint step a resumed job continues after
    stored_bytes    BIGINT NOT NULL DEFAULT 0,
    experiment_id   TEXT COLLATE "C",
    cell            BIGINT
);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE layers (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx    BIGINT NOT NULL,
    name   TEXT NOT NULL,
    shape  TEXT NOT NULL,                           -- JSON array of dimensions
    numel  BIGINT NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- Rows are numbered 1, 2, 3 … in step order per job (`n`), see src/store/rollup.rs.
CREATE TABLE steps (
    job_id            TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step              BIGINT NOT NULL,
    loss              DOUBLE PRECISION,             -- NULL when not finite
    grad_norm         DOUBLE PRECISION,
    grad_norm_clipped DOUBLE PRECISION,
    clip_coef         DOUBLE PRECISION,
    lr                DOUBLE PRECISION NOT NULL,
    skipped           BOOLEAN NOT NULL,
    n                 BIGINT,
    PRIMARY KEY (job_id, step)
);
CREATE UNIQUE INDEX steps_n ON steps (job_id, n);

CREATE TABLE corpora (
    id         TEXT COLLATE "C" PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    vocab_size BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- One row per recorded step. Each statistic is little-endian float32, one per layer in
-- layer order (NaN for non-finite); `hn` numbers the rows that carry histograms.
CREATE TABLE layer_stats (
    job_id       TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step         BIGINT NOT NULL,
    grad_norm    BYTEA NOT NULL,
    grad_max     BYTEA NOT NULL,
    grad_mean    BYTEA NOT NULL,
    grad_std     BYTEA NOT NULL,
    zero_frac    BYTEA NOT NULL,
    nonfinite    BYTEA NOT NULL,
    weight_norm  BYTEA NOT NULL,
    update_ratio BYTEA NOT NULL,
    hist         BYTEA,                             -- little-endian uint32, 51 per layer, when recorded
    n            BIGINT,
    hn           BIGINT,
    PRIMARY KEY (job_id, step)
);
CREATE UNIQUE INDEX layer_stats_n ON layer_stats (job_id, n, step);
CREATE UNIQUE INDEX layer_stats_hn ON layer_stats (job_id, hn);

CREATE TABLE events (
    job_id  TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,                        -- order within the job
    step    BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    layer   BIGINT,
    value   DOUBLE PRECISION,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE models (
    id         TEXT COLLATE "C" PRIMARY KEY,        -- UUIDv7: sorts by creation time
    bytes      BIGINT NOT NULL,
    detail     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE datasets (
    id         TEXT COLLATE "C" PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    detail     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Blocks of `steps`: two cells (loss, grad_norm) of float64.
CREATE TABLE step_rollups (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    level  BIGINT NOT NULL,
    block  BIGINT NOT NULL,
    last_n BIGINT NOT NULL,
    cells  BYTEA NOT NULL,
    PRIMARY KEY (job_id, level, block)
);

-- Blocks of `layer_stats`: one cell per layer and statistic (layer-major) of float32.
CREATE TABLE layer_rollups (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    level  BIGINT NOT NULL,
    block  BIGINT NOT NULL,
    last_n BIGINT NOT NULL,
    cells  BYTEA NOT NULL,
    PRIMARY KEY (job_id, level, block)
);

-- Measurements on schedules of their own: the values little-endian float32.
CREATE TABLE probes (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind   TEXT NOT NULL,
    step   BIGINT NOT NULL,
    value  BYTEA NOT NULL,
    PRIMARY KEY (job_id, kind, step)
);

CREATE TABLE experiments (
    id         TEXT COLLATE "C" PRIMARY KEY,        -- UUIDv7: sorts by creation time
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,                       -- the ExperimentSpec as JSON, as submitted
    cells      TEXT NOT NULL,                       -- JSON array of the cells: index, labels, values
    created_at TIMESTAMPTZ NOT NULL
);

ALTER TABLE jobs ADD CONSTRAINT jobs_experiment_id_fkey FOREIGN KEY (experiment_id) REFERENCES experiments (id);
CREATE INDEX jobs_experiment ON jobs (experiment_id, cell);
