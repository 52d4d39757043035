#!/usr/bin/env python3
"""What the process boundary costs: a small job's rate trained in a worker process vs in
the server's own process (`serve --in-process`), one job alone and two at once.

Each round starts a fresh server per mode, in interleaved order, and reads each job's rate
from the API (steps over finished_at - started_at); two concurrent jobs are also timed
together (the first start to the last finish). Prints min / median / max over the rounds.

    bench/workers.py --binary target/release/gradscope --rounds 5 --steps 1500
"""

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime


def spec(name, steps):
    # The stream benchmark's job: a 1x64 LSTM char LM, histograms on.
    return {
        "name": name, "steps": steps, "batch_size": 16, "device": "cpu",
        "task": {"kind": "char_lm", "seq_len": 32},
        "model": {"kind": "lstm", "layers": 1, "hidden": 64},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
        "monitor": {"histogram": True},
    }


def request(base, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as answer:
        return json.loads(answer.read())


def seconds(stamp):
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary, mode, jobs, steps, threads):
    """Trains `jobs` identical jobs at once; returns their rates, their joint rate and
    their durations (claim to end, seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        args = [binary, "serve", "--addr", f"127.0.0.1:{port}", "--database-url", f"sqlite://{folder}/db",
                "--data-dir", f"{folder}/data", "--max-jobs", str(jobs), "--torch-threads", str(threads)]
        if mode == "in-process":
            args.append("--in-process")
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    request(base, "/readyz")
                    break
                except OSError:
                    time.sleep(0.05)
            # As in a service that has been up a while: its spare worker has started.
            time.sleep(1.0)
            ids = [request(base, "/api/v1/jobs", spec(f"bench-{i}", steps))["id"] for i in range(jobs)]
            while True:
                done = [request(base, f"/api/v1/jobs/{i}") for i in ids]
                if all(j["status"] not in ("queued", "running") for j in done):
                    break
                time.sleep(0.1)
            for job in done:
                assert job["status"] == "succeeded", job
            rates = [j["step"] / (seconds(j["finished_at"]) - seconds(j["started_at"])) for j in done]
            span = max(seconds(j["finished_at"]) for j in done) - min(seconds(j["started_at"]) for j in done)
            durations = [seconds(j["finished_at"]) - seconds(j["started_at"]) for j in done]
            return rates, sum(j["step"] for j in done) / span, durations
        finally:
            server.terminate()
            server.wait()


def summary(xs):
    return f"{min(xs):7.1f} / {statistics.median(xs):7.1f} / {max(xs):7.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/gradscope")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    cores = len(__import__("os").sched_getaffinity(0))
    results = {}
    for _ in range(args.rounds):
        for mode in ("worker", "in-process"):
            # One job with every core; two jobs with half each (the default share).
            alone, _, _ = run(args.binary, mode, 1, args.steps, cores)
            results.setdefault((mode, "alone"), []).extend(alone)
            _, together, _ = run(args.binary, mode, 2, args.steps, max(1, cores // 2))
            results.setdefault((mode, "two"), []).append(together)
            # The fixed cost of a job: a one-step job from its claim to its end (a
            # worker's start, LibTorch's loading, the model's building, its end).
            _, _, (one,) = run(args.binary, mode, 1, 1, cores)
            results.setdefault((mode, "one step"), []).append(one * 1000)
    print(f"{args.rounds} interleaved rounds, {args.steps} steps per job, {cores} cores; min / median / max steps/s")
    for mode in ("worker", "in-process"):
        print(f"{mode:<11} one job alone          {summary(results[(mode, 'alone')])}")
        print(f"{mode:<11} two jobs at once, total {summary(results[(mode, 'two')])}")
        print(f"{mode:<11} a one-step job, ms      {summary(results[(mode, 'one step')])}")


if __name__ == "__main__":
    main()
