-- Uploaded TorchScript models and safetensors data sets: metadata here, the files in the
-- data folder. `detail` is what checking the file found, as JSON (parameters and buffers,
-- or tensors and samples).
CREATE TABLE models (
    id         TEXT PRIMARY KEY,            -- UUIDv7: sorts by creation time
    bytes      BIGINT NOT NULL,
    detail     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE datasets (
    id         TEXT PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    detail     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
