#!/usr/bin/env bash
# API responsiveness while a job trains.
#
#   bench/api_load.sh [SERVER_BINARY]     (default: target/release/gradscope)
#
# Starts the server on a free loopback port with a throw-away database, submits one
# char_lm LSTM job, lets it warm up, then:
#   1. reads the job's step rate with no load (from `step` of GET /api/v1/jobs/{id}),
#   2. loads GET /api/v1/jobs with wrk and reads the step rate meanwhile,
#   3. the same for GET /api/v1/jobs/{id}/steps,
#   4. reads the step rate with no load again,
# prints requests/s, p50/p99 latency and the step rates as a table, and stops the server.
# All traffic goes to 127.0.0.1 and every phase is bounded in time.
#
# Environment:
#   LOAD_SECONDS      seconds of wrk per endpoint (default 15)
#   LOAD_CONNECTIONS  wrk connections (default 4)
#   LOAD_THREADS      wrk threads (default 1)
#   WARMUP_SECONDS    training time before the first measurement (default 10)
#   IDLE_SECONDS      window of each no-load step-rate reading (default 10)
#   TORCH_THREADS     LibTorch threads of the server (default 1)
#   JOB_SPEC          the job to train (JSON; default: char_lm, 1-layer LSTM, hidden 64)
set -euo pipefail

cd "$(dirname "$0")/.."
bin="${1:-target/release/gradscope}"
if [ ! -x "$bin" ]; then
    echo "api_load: no server binary at $bin (build it first: cargo build --release)" >&2
    exit 2
fi
load_s="${LOAD_SECONDS:-15}"
conns="${LOAD_CONNECTIONS:-4}"
wrk_threads="${LOAD_THREADS:-1}"
warmup_s="${WARMUP_SECONDS:-10}"
idle_s="${IDLE_SECONDS:-10}"
torch_threads="${TORCH_THREADS:-1}"
default_spec='{"name": "api-load", "steps": 200000, "batch_size": 16, "device": "cpu",
  "task": {"kind": "char_lm", "seq_len": 32}, "model": {"kind": "lstm", "layers": 1, "hidden": 64}}'
spec="${JOB_SPEC:-$default_spec}"

if ! command -v wrk >/dev/null; then
    echo "api_load: installing wrk from Debian's packages" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gradscope-load.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/data"
: >"$work/server.log"
"$bin" serve \
    --addr 127.0.0.1:0 \
    --database-url "sqlite://$work/db.sqlite" \
    --data-dir "$work/data" \
    --max-jobs 1 \
    --torch-threads "$torch_threads" \
    --log-json \
    >"$work/server.log" 2>&1 &
server_pid=$!

addr=""
for _ in $(seq 300); do
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    [ -n "$addr" ] || addr="$(grep -m1 -o '"addr":"127\.0\.0\.1:[0-9]*"' "$work/server.log" |
        cut -d'"' -f4 || true)"
    [ -n "$addr" ] && curl -fs -o /dev/null --max-time 2 "http://$addr/readyz" && break
    sleep 0.2
done
curl -fs -o /dev/null --max-time 2 "http://$addr/readyz" ||
    { echo "api_load: the server did not become ready in 60 s" >&2; exit 1; }
base="http://$addr/api/v1"

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
now() { date +%s.%N; }
step_of() { curl -fs --max-time 5 "$base/jobs/$job" | json "['step']"; }

job="$(curl -fsS --max-time 10 -H 'content-type: application/json' -d "$spec" "$base/jobs" | json "['id']")"
echo "api_load: server $bin on $addr, job $job; warming up for ${warmup_s}s" >&2
for _ in $(seq 600); do
    [ "$(curl -fs --max-time 5 "$base/jobs/$job" | json "['status']")" = running ] && break
    sleep 0.1
done
sleep "$warmup_s"

# Steps per second over a window of $1 seconds.
step_rate() {
    local s0 t0 s1 t1
    s0="$(step_of)"; t0="$(now)"
    sleep "$1"
    s1="$(step_of)"; t1="$(now)"
    python3 -c "print(f'{($s1 - $s0) / ($t1 - $t0):.1f}')"
}

# wrk on $1 for $load_s seconds, with the step rate read over the middle of that time.
# Sets: rps p50 p99 errors rate_load
load() {
    local out="$work/wrk.txt"
    wrk -t "$wrk_threads" -c "$conns" -d "${load_s}s" --timeout 10s --latency "$1" >"$out" 2>&1 &
    local wrk_pid=$!
    sleep 1
    rate_load="$(step_rate $((load_s - 2)))"
    wait "$wrk_pid"
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END {print n + 0}' "$out")"
    if [ -z "$rps" ]; then
        echo "api_load: wrk failed on $1:" >&2
        cat "$out" >&2
        exit 1
    fi
}

loadavg_before="$(cut -d' ' -f1-3 /proc/loadavg)"
rate_idle_before="$(step_rate "$idle_s")"
load "$base/jobs"
jobs_rps=$rps jobs_p50=$p50 jobs_p99=$p99 jobs_err=$errors jobs_rate=$rate_load
load "$base/jobs/$job/steps"
steps_rps=$rps steps_p50=$p50 steps_p99=$p99 steps_err=$errors steps_rate=$rate_load
rate_idle_after="$(step_rate "$idle_s")"
points="$(curl -fs --max-time 10 "$base/jobs/$job/steps" | json "['step'].__len__()")"
final_step="$(step_of)"
loadavg_after="$(cut -d' ' -f1-3 /proc/loadavg)"

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "api_load: the server died during the run" >&2
    cat "$work/server.log" >&2
    exit 1
fi

cat <<EOF

API load while one job trains ($(nproc) cores; wrk: $wrk_threads thread(s), $conns connections, ${load_s}s per endpoint;
server: $bin, --torch-threads $torch_threads; the job was at step $final_step at the end,
GET .../steps returned $points points; load average $loadavg_before before, $loadavg_after after)

| load                           | requests/s | p50 latency | p99 latency | errors | job steps/s |
|--------------------------------|-----------:|------------:|------------:|-------:|------------:|
| none (before)                  |          - |           - |           - |      - | $(printf '%11s' "$rate_idle_before") |
| GET /api/v1/jobs               | $(printf '%10s' "$jobs_rps") | $(printf '%11s' "$jobs_p50") | $(printf '%11s' "$jobs_p99") | $(printf '%6s' "$jobs_err") | $(printf '%11s' "$jobs_rate") |
| GET /api/v1/jobs/{id}/steps    | $(printf '%10s' "$steps_rps") | $(printf '%11s' "$steps_p50") | $(printf '%11s' "$steps_p99") | $(printf '%6s' "$steps_err") | $(printf '%11s' "$steps_rate") |
| none (after)                   |          - |           - |           - |      - | $(printf '%11s' "$rate_idle_after") |
EOF
