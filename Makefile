# The two doors: `make run` starts the service, `make test` runs every check.
# Both create the torch venv first when it is missing (see scripts/with-torch).

WITH_TORCH := scripts/with-torch
ARGS ?=

.PHONY: run test build lint bench

## Build (release) and start the service on http://127.0.0.1:8080 with SQLite under ./data/.
run:
	$(WITH_TORCH) cargo build --release --locked
	./target/release/gradscope serve $(ARGS)

## Formatting, lints, unit and integration tests (installs Prometheus and docker-compose
## from Debian's packages first when they are missing).
test: lint
	scripts/test-deps
	$(WITH_TORCH) cargo test --locked --all-targets

lint:
	cargo fmt --all -- --check
	$(WITH_TORCH) cargo clippy --locked --all-targets -- -D warnings

build:
	$(WITH_TORCH) cargo build --release --locked

## Step-time cost of monitoring: gradscope's kernels, then eager PyTorch on the same models.
bench: build
	$(WITH_TORCH) ./target/release/gradscope bench $(ARGS)
	$(WITH_TORCH) python bench/pytorch_bench.py $(ARGS)
