-- Mixed precision. The loss scale each step ran at (fp16 with loss scaling; NULL
-- otherwise), and each layer's underflow fraction (float32 per layer, as the other
-- statistics; empty for rows stored before it was measured).
ALTER TABLE steps ADD COLUMN loss_scale DOUBLE PRECISION;
ALTER TABLE layer_stats ADD COLUMN underflow BLOB NOT NULL DEFAULT x'';
-- The layer blocks hold every statistic of every layer: those written before hold one
-- fewer per layer, so they are dropped and rebuilt from the rows at start-up.
DELETE FROM layer_rollups;
