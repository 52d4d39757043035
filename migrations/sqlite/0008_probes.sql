-- Measurements taken on schedules of their own (monitor.spectral_every, ...): one row per
-- job, kind and measured step, the values a BLOB of little-endian float32 (NaN for
-- non-finite) in the kind's order (spectral: the measured matrices' order).
CREATE TABLE probes (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind   TEXT NOT NULL,
    step   BIGINT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (job_id, kind, step)
);
