-- A cancel asked of a node that does not run the job (PostgreSQL: 0004_cancel_requested.sql):
-- the node that runs it sees the request here and stops the job. Cleared by each claim.
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
