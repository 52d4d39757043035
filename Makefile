# The two doors: `make run` starts the service, `make test` runs every check.
# Both create the torch venv first when it is missing (see scripts/with-torch).

WITH_TORCH := scripts/with-torch
ARGS ?=

.PHONY: run test build install lint bench

## Build (release) and start the service on http://127.0.0.1:8080 with SQLite under ./data/.
run:
	scripts/web-deps
	$(WITH_TORCH) cargo build --release --locked
	./target/release/gradscope serve $(ARGS)

## Formatting, lints (the dashboard's scripts type-checked too), the Prometheus and
## Alertmanager configs and the alert rules' unit tests, unit, integration, parity and
## browser tests, then a bounded fuzz run of the API (installs Prometheus, Alertmanager,
## docker-compose and chromium from Debian's packages, and schemathesis from PyPI, first
## when they are missing).
test: lint
	scripts/test-deps
	scripts/web-deps
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts.test.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	$(WITH_TORCH) cargo test --locked --all-targets
	GRADSCOPE_BIN=target/debug/gradscope scripts/browser-test
	FUZZ_MAX_EXAMPLES=30 scripts/fuzz target/debug/gradscope

lint:
	cargo fmt --all -- --check
	$(WITH_TORCH) cargo clippy --locked --all-targets -- -D warnings
	scripts/js-check

build:
	scripts/web-deps
	$(WITH_TORCH) cargo build --release --locked

## Install the binary, the dashboard built in, into ~/.cargo/bin: `gradscope serve` then
## serves the whole dashboard from any folder.
install:
	scripts/web-deps
	$(WITH_TORCH) cargo install --locked --path .

## Step-time cost of monitoring: gradscope's step, then eager PyTorch on the same models.
## `cargo bench --bench stream` (not run here) measures 500 WebSocket subscribers.
bench:
	$(WITH_TORCH) cargo bench --locked --bench steps -- $(ARGS)
	$(WITH_TORCH) python bench/pytorch_bench.py $(ARGS)
