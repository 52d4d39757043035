# The two doors: `make run` starts the service, `make test` runs every check.
# Both create the torch venv first when it is missing (see scripts/with-torch).

WITH_TORCH := scripts/with-torch
ARGS ?=

.PHONY: run test build lint

## Build (release) and start the service on http://127.0.0.1:8080 with SQLite under ./data/.
run:
	$(WITH_TORCH) cargo build --release --locked
	./target/release/gradscope serve $(ARGS)

## Formatting, lints, unit and integration tests.
test: lint
	$(WITH_TORCH) cargo test --locked --all-targets

lint:
	cargo fmt --all -- --check
	$(WITH_TORCH) cargo clippy --locked --all-targets -- -D warnings

build:
	$(WITH_TORCH) cargo build --release --locked
