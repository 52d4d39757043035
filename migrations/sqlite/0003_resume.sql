-- Resuming interrupted jobs: the checkpoint step a job continues after.
ALTER TABLE jobs ADD COLUMN resumed_from BIGINT;
