-- Several nodes on one database (SQLite: 0011_nodes.sql). Each node's row, renewed by its
-- heartbeat; each job the node that runs it and until when that node holds it (its
-- lease), and how many times it started. Times of the heartbeat and the lease are
-- milliseconds since 1970 on the database's clock, so that the nodes' own clocks do not
-- matter.
CREATE TABLE nodes (
    id           TEXT COLLATE "C" PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    addr         TEXT
);
ALTER TABLE jobs ADD COLUMN node_id TEXT COLLATE "C";
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
-- Jobs that ran before have started once.
UPDATE jobs SET attempts = 1 WHERE started_at IS NOT NULL;
-- The sweep for expired leases reads running jobs only.
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE status = 'running';
