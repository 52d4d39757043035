-- Several nodes on one database. Each node's row, renewed by its heartbeat; each job the
-- node that runs it and until when that node holds it (its lease), and how many times it
-- started. Times of the heartbeat and the lease are milliseconds since 1970 on the
-- database's clock, so that the nodes' own clocks do not matter.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    addr         TEXT
);
ALTER TABLE jobs ADD COLUMN node_id TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
-- Jobs that ran before have started once.
UPDATE jobs SET attempts = 1 WHERE started_at IS NOT NULL;
