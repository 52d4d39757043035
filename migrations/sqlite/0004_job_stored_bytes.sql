-- What each job has stored: the bytes of its per-step records, per-layer statistics and
-- events (text and blobs at their length, every number 8 bytes), kept by the writer.
ALTER TABLE jobs ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
