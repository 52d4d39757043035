-- Per-layer statistics, diagnosis events, and the job's current diagnosis.

-- One row per recorded step. Each statistic is a BLOB of little-endian float32, one per
-- layer in layer order (NaN for non-finite), so a 100-layer job writes one row a step and
-- a query for one statistic reads only its column.
CREATE TABLE layer_stats (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step         BIGINT NOT NULL,
    grad_norm    BLOB NOT NULL,
    grad_max     BLOB NOT NULL,
    grad_mean    BLOB NOT NULL,
    grad_std     BLOB NOT NULL,
    zero_frac    BLOB NOT NULL,
    nonfinite    BLOB NOT NULL,
    weight_norm  BLOB NOT NULL,
    update_ratio BLOB NOT NULL,
    hist         BLOB,                      -- little-endian uint32, 51 per layer, when recorded
    PRIMARY KEY (job_id, step)
);

CREATE TABLE events (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,               -- order within the job
    step    BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    layer   INTEGER,
    value   DOUBLE PRECISION,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

ALTER TABLE jobs ADD COLUMN diagnosis TEXT;   -- JSON, the latest diagnosis
ALTER TABLE jobs ADD COLUMN dropped_reports BIGINT NOT NULL DEFAULT 0;
