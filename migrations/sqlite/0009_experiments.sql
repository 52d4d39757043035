-- Experiments: a base spec, axes and seeds expanded into ordinary jobs. Each job of an
-- experiment records it and its cell (the combination of the axes' values it runs).
CREATE TABLE experiments (
    id         TEXT PRIMARY KEY,            -- UUIDv7: sorts by creation time
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,               -- the ExperimentSpec as JSON, as submitted
    cells      TEXT NOT NULL,               -- JSON array of the cells: index, labels, values
    created_at TEXT NOT NULL
);

ALTER TABLE jobs ADD COLUMN experiment_id TEXT REFERENCES experiments (id);
ALTER TABLE jobs ADD COLUMN cell INTEGER;
CREATE INDEX jobs_experiment ON jobs (experiment_id, cell);
