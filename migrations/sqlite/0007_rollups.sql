-- Pre-aggregated levels of each job's history (src/store/rollup.rs). Rows of `steps` and
-- `layer_stats` are numbered 1, 2, 3 … in step order per job (`n`; `hn` numbers the
-- `layer_stats` rows that carry histograms), and a block of level k summarises 16^k
-- consecutive rows: per series, its minimum and maximum with their rows and its first
-- non-finite row (`cells`, see rollup::encode). `last_n` is the block's last row, so
-- truncating a job deletes the blocks past its new end.
ALTER TABLE steps ADD COLUMN n BIGINT;
UPDATE steps SET n = numbered.n
FROM (SELECT job_id, step, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY step) AS n FROM steps) AS numbered
WHERE steps.job_id = numbered.job_id AND steps.step = numbered.step;
CREATE UNIQUE INDEX steps_n ON steps (job_id, n);

ALTER TABLE layer_stats ADD COLUMN n BIGINT;
ALTER TABLE layer_stats ADD COLUMN hn BIGINT;
UPDATE layer_stats SET n = numbered.n
FROM (SELECT job_id, step, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY step) AS n FROM layer_stats) AS numbered
WHERE layer_stats.job_id = numbered.job_id AND layer_stats.step = numbered.step;
UPDATE layer_stats SET hn = numbered.hn
FROM (SELECT job_id, step, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY step) AS hn
      FROM layer_stats WHERE hist IS NOT NULL) AS numbered
WHERE layer_stats.job_id = numbered.job_id AND layer_stats.step = numbered.step;
-- With the step: a query that needs only the steps of some rows reads only the index.
CREATE UNIQUE INDEX layer_stats_n ON layer_stats (job_id, n, step);
CREATE UNIQUE INDEX layer_stats_hn ON layer_stats (job_id, hn);

-- Blocks of `steps`: two cells (loss, grad_norm) of float64.
CREATE TABLE step_rollups (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    level  INTEGER NOT NULL,
    block  BIGINT NOT NULL,
    last_n BIGINT NOT NULL,
    cells  BLOB NOT NULL,
    PRIMARY KEY (job_id, level, block)
);

-- Blocks of `layer_stats`: one cell per layer and statistic (layer-major, statistics in
-- the order of the columns above) of float32.
CREATE TABLE layer_rollups (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    level  INTEGER NOT NULL,
    block  BIGINT NOT NULL,
    last_n BIGINT NOT NULL,
    cells  BLOB NOT NULL,
    PRIMARY KEY (job_id, level, block)
);
