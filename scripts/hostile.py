"""Hostile clients against a running gradscope server: a seeded WebSocket fuzzer, then a
burst of the requests that once could crash or exhaust the service, all at once.

    python scripts/hostile.py --url http://127.0.0.1:PORT --pid SERVER_PID \
        [--seed 1] [--rss-limit-mib 1024]

It first cancels what the server has queued or running, then trains a small job to the
end (its steps, statistics and checkpoint are read in the burst) and starts a long one
whose stream the WebSocket clients follow.

Passes (exit 0) when, throughout: no answer is a 5xx, the server keeps answering
/healthz within 1 s, every oversized WebSocket message closes its socket with 1009, and
the server's peak resident memory (VmHWM) stays under the stated bound. Prints the
figures it saw.
"""

import argparse
import json
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

failures = []
lock = threading.Lock()


def fail(message):
    with lock:
        failures.append(message)


def memory_kib(pid, field):
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def check_status(response, what):
    if response.status_code >= 500:
        fail(f"{what}: {response.status_code} {response.text[:200]}")


# --- the WebSocket fuzzer ------------------------------------------------------------------


def random_value(rng, depth=0):
    choices = [
        lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.random() * 10 ** rng.randint(-5, 30),
        lambda: "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40))),
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: [rng.randint(-5, 10**6) for _ in range(rng.randint(0, 300))],
    ]
    if depth < 3:
        choices.append(lambda: [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))])
        choices.append(lambda: {"k" + str(i): random_value(rng, depth + 1) for i in range(rng.randint(0, 5))})
    return rng.choice(choices)()


def random_message(rng):
    kind = rng.randrange(7)
    if kind == 0:  # a well-formed subscribe with random values
        message = {"type": "subscribe"}
        if rng.random() < 0.8:
            message["every"] = random_value(rng)
        if rng.random() < 0.8:
            message["layers"] = random_value(rng)
        return json.dumps(message)
    if kind == 1:  # an unknown type
        return json.dumps({"type": random_value(rng), "layers": random_value(rng)})
    if kind == 2:  # random JSON
        return json.dumps(random_value(rng))
    if kind == 3:  # random text
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 200)))
    if kind == 4:  # random bytes
        return rng.randbytes(rng.randint(0, 512))
    if kind == 5:  # truncated JSON
        text = json.dumps({"type": "subscribe", "layers": list(range(rng.randint(0, 50)))})
        return text[: rng.randint(0, len(text))]
    # deeply nested JSON, under the size bound
    depth = rng.randint(10, 1000)
    return "[" * depth + "]" * depth


def fuzz_websocket(ws_url, rng, connections, messages_per_connection, http):
    sent = closed_as_too_big = 0
    for _ in range(connections):
        try:
            with connect(ws_url, open_timeout=10, close_timeout=2, max_size=None) as socket:
                socket.recv(timeout=10)  # hello
                for _ in range(messages_per_connection):
                    socket.send(random_message(rng))
                    sent += 1
                    try:
                        while True:  # drain what the server sent, without blocking long
                            socket.recv(timeout=0.01)
                    except TimeoutError:
                        pass
                # Past the 4 KiB bound the server closes with 1009 and goes on. Past the
                # 64 KiB frame bound it stops reading at the frame header and drops the
                # connection, with or without its close frame arriving first.
                huge = rng.random() < 0.5
                layers = list(range(20_000 if huge else 1_500))
                socket.send(json.dumps({"type": "subscribe", "layers": layers}))
                try:
                    while True:
                        socket.recv(timeout=10)
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd else None
                    if code == 1009:
                        closed_as_too_big += 1
                    elif not (huge and code is None):
                        fail(f"an oversized message closed the socket with {code}, not 1009")
                except TimeoutError:
                    fail("an oversized message did not close the socket")
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            if code not in (1000, 1008, 1009):
                fail(f"the server closed a fuzzed socket with {code}")
        except (OSError, TimeoutError) as err:
            fail(f"websocket: {err!r}")
        check_status(http.get(f"{args.url}/healthz", timeout=5), "/healthz after a fuzzed socket")
    return sent, closed_as_too_big


# --- the burst -----------------------------------------------------------------------------


def burst_requests(rng, base, job, live):
    """(what, callable) pairs: the request classes that once crashed or exhausted the service."""
    repeated = ",".join(["grad_norm"] * 3000)
    layers = ",".join(["0"] * 4000)
    spec_huge_task = {
        "task": {"kind": "classification", "features": 16384, "classes": 10000, "clusters": 64},
        "model": {"kind": "mlp", "layers": 1, "hidden": 8},
        "steps": 10,
    }
    spec_many_policies = {
        "task": {"kind": "classification"},
        "model": {"kind": "mlp", "layers": 1, "hidden": 8},
        "policy": {"grad": [{"kind": "autoclip", "history": 1_000_000}] * 1000},
    }
    spec_huge_cooldown = {
        "task": {"kind": "classification"},
        "model": {"kind": "mlp", "layers": 1, "hidden": 8},
        "steps": 10,
        "monitor": {"cooldown": 2**64 - 1},
    }
    corpus = ("hostile corpus " * 60_000).encode()  # about 900 KB, under the fuzz server's 1 MiB limit

    def get(path, **kw):
        return lambda s: s.get(base + path, timeout=30, **kw)

    def post(path, **kw):
        return lambda s: s.post(base + path, timeout=30, **kw)

    def method(verb, path):
        return lambda s: s.request(verb, base + path, timeout=30)

    out = []
    for _ in range(12):
        out.append(("repeated stats", get(f"/api/v1/jobs/{job}/layer-stats?stat={repeated}&layers={layers}")))
        out.append(("every layer's histograms", get(f"/api/v1/jobs/{job}/layer-stats?stat=hist")))
        out.append(("steps", get(f"/api/v1/jobs/{live}/steps")))
        out.append(("huge task", post("/api/v1/jobs", json=spec_huge_task)))
        out.append(("many policies", post("/api/v1/jobs", json=spec_many_policies)))
        out.append(("huge cooldown", post("/api/v1/jobs", json=spec_huge_cooldown)))
        out.append(("checkpoint", get(f"/api/v1/jobs/{job}/checkpoint")))
        out.append(("text/plain corpus", post("/api/v1/corpora", data=corpus, headers={"content-type": "text/plain"})))
        out.append(("corpus", post("/api/v1/corpora", data=corpus, headers={"content-type": "application/octet-stream"})))
        out.append(("rebinding", get("/api/v1/jobs", headers={"host": "attacker.example:80"})))
        out.append(("token in query", get("/api/v1/jobs?token=guess")))
    for _ in range(60):
        verb = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 8)))
        path = "/" + "".join(rng.choice(string.ascii_lowercase + "/") for _ in range(rng.randint(1, 30)))
        out.append(("random method", method(verb, rng.choice(["/healthz", "/api/v1/jobs", path]))))
    rng.shuffle(out)
    return out


def open_sockets(ws_url, count, hold_seconds):
    """Many subscribers at once, each asking for a long layer list."""

    def one(_):
        try:
            with connect(ws_url, open_timeout=10, close_timeout=2, max_size=None) as socket:
                socket.send(json.dumps({"type": "subscribe", "layers": list(range(900))}))
                end = time.monotonic() + hold_seconds
                while time.monotonic() < end:
                    try:
                        socket.recv(timeout=0.2)
                    except TimeoutError:
                        pass
        except ConnectionClosed:
            pass
        except (OSError, TimeoutError) as err:
            fail(f"burst websocket: {err!r}")

    return one


SMALL_JOB = {
    "name": "hostile-finished", "steps": 60, "batch_size": 8, "device": "cpu",
    "task": {"kind": "classification"}, "model": {"kind": "mlp", "layers": 3, "hidden": 16},
}
LONG_JOB = {
    "name": "hostile-live", "steps": 1_000_000, "batch_size": 8, "device": "cpu",
    "task": {"kind": "char_lm", "seq_len": 16}, "model": {"kind": "lstm", "layers": 1, "hidden": 32},
    "monitor": {"every": 5},
}


def prepare(http):
    """A finished job and a training one, on a server with nothing else to do."""
    api = f"{args.url}/api/v1"
    for status in ("queued", "running"):
        for job in http.get(f"{api}/jobs?status={status}", timeout=10).json()["jobs"]:
            http.post(f"{api}/jobs/{job['id']}/cancel", timeout=10)

    def wait(job_id, done):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = http.get(f"{api}/jobs/{job_id}", timeout=10).json()
            if done(job):
                return job
            time.sleep(0.1)
        raise SystemExit(f"hostile: job {job_id} did not get ready: {job}")

    finished = http.post(f"{api}/jobs", json=SMALL_JOB, timeout=10).json()["id"]
    wait(finished, lambda j: j["status"] == "succeeded")
    live = http.post(f"{api}/jobs", json=LONG_JOB, timeout=10).json()["id"]
    wait(live, lambda j: j["status"] == "running" and j["step"] > 0)
    return finished, live


def main():
    rng = random.Random(args.seed)
    http = requests.Session()
    args.job, args.live = prepare(http)
    ws_base = args.url.replace("http://", "ws://")
    baseline_hwm = memory_kib(args.pid, "VmHWM")

    started = time.monotonic()
    sent, too_big = fuzz_websocket(f"{ws_base}/api/v1/jobs/{args.live}/stream", rng, args.connections, args.messages, http)
    fuzz_seconds = time.monotonic() - started

    # The probe runs in its own process, so the burst's client threads cannot delay it.
    probe = subprocess.Popen(
        [sys.executable, __file__, "--probe", f"{args.url}/healthz"], stdout=subprocess.PIPE, text=True
    )
    # The clients yield the CPU to the server and the probe: on a small machine the burst's
    # own threads would otherwise be what delays the probe.
    os.nice(10)
    requests_ = burst_requests(rng, args.url, args.job, args.live)
    statuses = {}
    slowest = {}

    def run(item):
        what, call = item
        session = requests.Session()
        try:
            t = time.monotonic()
            response = call(session)
            elapsed = time.monotonic() - t
            check_status(response, what)
            with lock:
                statuses.setdefault(what, set()).add(response.status_code)
                slowest[what] = max(slowest.get(what, 0.0), elapsed)
        except requests.RequestException as err:
            fail(f"{what}: {err!r}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        sockets = [pool.submit(open_sockets(f"{ws_base}/api/v1/jobs/{args.live}/stream", 0, 3), i) for i in range(24)]
        list(pool.map(run, requests_))
        for s in sockets:
            s.result()
    burst_seconds = time.monotonic() - started
    probe.terminate()
    health = [(float(t), ok == "1") for t, ok in (line.split() for line in probe.communicate()[0].splitlines())]
    worst = max((t for t, _ in health), default=0.0)
    if any(not ok for _, ok in health):
        fail("/healthz failed during the burst")
    if worst > 1.0:
        fail(f"/healthz took {worst:.2f} s during the burst (bound: 1 s)")
    peak_mib = memory_kib(args.pid, "VmHWM") / 1024
    rss_mib = memory_kib(args.pid, "VmRSS") / 1024
    if peak_mib > args.rss_limit_mib:
        fail(f"the server's peak resident memory reached {peak_mib:.0f} MiB (bound: {args.rss_limit_mib} MiB)")

    print(f"hostile: websocket fuzz: {sent} random messages over {args.connections} sockets in {fuzz_seconds:.1f} s; "
          f"{too_big} oversized messages closed with 1009")
    print(f"hostile: burst: {len(requests_)} requests and 24 sockets in {burst_seconds:.1f} s; "
          f"/healthz {len(health)} probes, slowest {worst * 1000:.0f} ms")
    for what in sorted(statuses):
        print(f"hostile:   {what}: {sorted(statuses[what])}, slowest {slowest[what] * 1000:.0f} ms")
    http.post(f"{args.url}/api/v1/jobs/{args.live}/cancel", timeout=10)
    print(f"hostile: server memory: peak {peak_mib:.0f} MiB (before: {baseline_hwm / 1024:.0f} MiB), "
          f"now {rss_mib:.0f} MiB, bound {args.rss_limit_mib} MiB")
    for message in failures[:20]:
        print(f"hostile: FAILED: {message}", file=sys.stderr)
    return 1 if failures else 0


def probe_health(url):
    """Prints `seconds ok` for a /healthz request every 50 ms until terminated."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    session = requests.Session()
    while True:
        t = time.monotonic()
        try:
            ok = session.get(url, timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        print(f"{time.monotonic() - t:.4f} {int(ok)}", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe_health(sys.argv[2])
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--rss-limit-mib", type=int, default=1024)
    args = parser.parse_args()
    sys.exit(main())
