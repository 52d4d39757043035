-- Validation passes: the task's loss on held-out data and its metric (accuracy, solve rate).
CREATE TABLE evals (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step   BIGINT NOT NULL,
    loss   DOUBLE PRECISION,
    metric TEXT,
    value  DOUBLE PRECISION,
    PRIMARY KEY (job_id, step)
);
