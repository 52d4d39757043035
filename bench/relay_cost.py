"""The cost in step rate of publishing live feeds to NATS (`--nats-url`).

Starts two servers on free loopback ports, each with a throw-away SQLite database: one
without `--nats-url`, one publishing to the NATS server at NATS_URL (default
nats://127.0.0.1:4222, JetStream enabled) under a subject prefix of its own. Then, in
interleaved rounds, trains the same job on each, one at a time, and reads its step rate:
the job's steps over the time from its start to its end (`started_at`, `finished_at`;
the worker is started ahead of the job, so what that adds is the model's set-up, the same
with and without NATS). Prints min / median /
max per setting and the median's ratio. All traffic goes to 127.0.0.1; every wait is
bounded.

    python3 bench/relay_cost.py [SERVER_BINARY]   (default: target/release/gradscope)

Environment: ROUNDS (default 5), STEPS (default 3000), TORCH_THREADS (default 1),
NATS_URL, JOB_SPEC (JSON; default: a 4-layer MLP with every statistic and a histogram
at every step, so each message is a few kilobytes).
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/gradscope"
ROUNDS = int(os.environ.get("ROUNDS", "5"))
STEPS = int(os.environ.get("STEPS", "3000"))
THREADS = os.environ.get("TORCH_THREADS", "1")
NATS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
SPEC = json.loads(os.environ.get("JOB_SPEC", "null")) or {
    "name": "relay-cost",
    "seed": 1,
    "steps": STEPS,
    "batch_size": 32,
    "device": "cpu",
    "task": {"kind": "classification", "features": 32, "classes": 4},
    "model": {"kind": "mlp", "layers": 4, "hidden": 64},
    "optimizer": {"kind": "adamw", "lr": 0.001},
    "monitor": {"every": 1, "histogram": True, "histogram_every": 1},
}
SPEC["steps"] = STEPS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def start(extra):
    port = free_port()
    folder = tempfile.mkdtemp(prefix="relay-cost-")
    args = [BIN, "serve", "--addr", f"127.0.0.1:{port}", "--database-url", f"sqlite://{folder}/db.sqlite",
            "--data-dir", f"{folder}/data", "--torch-threads", THREADS, *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSCOPE_")}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/readyz", timeout=2)
            return process, url
        except OSError:
            if time.time() > deadline:
                process.kill()
                sys.exit(f"the server at {url} never became ready")
            time.sleep(0.1)


def rate(url):
    job = call(f"{url}/api/v1/jobs", SPEC)
    deadline = time.time() + 600
    while job["status"] in ("queued", "running"):
        if time.time() > deadline:
            sys.exit(f"job {job['id']} did not finish in time")
        time.sleep(0.2)
        job = call(f"{url}/api/v1/jobs/{job['id']}")
    assert job["status"] == "succeeded", job
    began = datetime.fromisoformat(job["started_at"])
    ended = datetime.fromisoformat(job["finished_at"])
    return job["step"] / (ended - began).total_seconds()


def main():
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    servers = {
        "local only": start([]),
        "--nats-url": start(["--nats-url", NATS, "--nats-prefix", prefix]),
    }
    rates = {name: [] for name in servers}
    try:
        for _ in range(ROUNDS):
            for name, (_, url) in servers.items():
                rates[name].append(rate(url))
        metrics = urllib.request.urlopen(f"{servers['--nats-url'][1]}/metrics", timeout=10).read().decode()
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    print(f"{STEPS} steps per job, {ROUNDS} interleaved rounds, torch threads {THREADS}, binary {BIN}")
    print(f"{'setting':<12} {'min':>9} {'median':>9} {'max':>9}  steps/s")
    for name, values in rates.items():
        print(f"{name:<12} {min(values):9.1f} {statistics.median(values):9.1f} {max(values):9.1f}")
    ratio = statistics.median(rates["--nats-url"]) / statistics.median(rates["local only"])
    print(f"median with NATS / without: {ratio:.3f}")
    for line in metrics.splitlines():
        if line.startswith("gradscope_live_relay_messages_total"):
            print(line)


if __name__ == "__main__":
    main()
