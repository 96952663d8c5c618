#!/usr/bin/env python3
"""Soak: 64 connections of mixed valid and malformed traffic against one
`neorun serve` with every feature on (three models, dynamic batching, a
declared endpoint with two production variants, a shadow and data capture,
the bearer token, the header timeout and the connection limit), for
SECONDS. Every 5 s the monitor asks /ping on a fresh connection (a wedge is
one that does not answer in 2 s) and reads the server's RSS and open file
descriptors. Prints the totals and writes OUT (JSON). See run.sh.

usage: soak.py SECONDS OUT WORKDIR"""
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time

SECONDS, OUT, WORK = int(sys.argv[1]), sys.argv[2], os.path.abspath(sys.argv[3])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEORUN = os.path.join(ROOT, "target/release/neorun")
TOKEN = "soak-token"
ROW = open(os.path.join(ROOT, "models/fraud-xgb/sample.csv")).read().splitlines()[0]
CONNS = 64


def request(method, path, body=b"", headers=None, auth=True, raw_head=None):
    if raw_head is not None:
        return raw_head + body
    h = {"Host": "soak", "Content-Length": str(len(body))}
    if auth:
        h["Authorization"] = f"Bearer {TOKEN}"
    h.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode() + body


def csv(model, body):
    return request("POST", "/invocations", body.encode() if isinstance(body, str) else body,
                   {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": model})


def oip(model, doc):
    return request("POST", f"/v2/models/{model}/infer", json.dumps(doc).encode(), {"Content-Type": "application/json"})


ROW30 = [float(v) for v in ROW.split(",")]
# (kind, request bytes, what a right answer is: a set of statuses)
VALID = [
    ("csv-xgb", lambda: csv("fraud-xgb", ROW + "\n" + ROW + "\n"), {200}),
    ("csv-mlp", lambda: csv("fraud-mlp", ROW + "\n"), {200}),
    ("json-mlp", lambda: request("POST", "/invocations", json.dumps({"instances": [ROW30]}).encode(),
                                 {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "fraud-mlp"}), {200}),
    ("oip-mlp", lambda: oip("fraud-mlp", {"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "data": ROW30}]}), {200}),
    ("endpoint", lambda: request("POST", "/endpoints/soak/invocations", (ROW + "\n").encode(), {"Content-Type": "text/csv"}), {200}),
    ("mod-ok", lambda: request("POST", "/invocations", b'{"inputs": {"a": [[7, -7]], "b": [[3, 3]]}}',
                               {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "mod"}), {200}),
    ("ping", lambda: request("GET", "/ping", auth=False), {200}),
    ("metrics", lambda: request("GET", "/metrics"), {200}),
]
MALFORMED = [
    ("mod-zero", lambda: request("POST", "/invocations", b'{"inputs": {"a": [[7, -7]], "b": [[0, 3]]}}',
                                 {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "mod"}), {424}),
    ("csv-text", lambda: csv("fraud-xgb", "hello,world\n"), {400}),
    ("csv-width", lambda: csv("fraud-xgb", "1,2,3\n"), {400}),
    ("csv-nan", lambda: csv("fraud-mlp", ",".join(["nan"] * 30) + "\n"), {400}),
    ("json-deep", lambda: request("POST", "/invocations", b"[" * 100000, {"Content-Type": "application/json"}), {400}),
    ("json-utf8", lambda: request("POST", "/invocations", b'{"instances": ["\xff\xfe"]}', {"Content-Type": "application/json"}), {400}),
    ("oip-huge", lambda: oip("fraud-mlp", {"inputs": [{"name": "features", "shape": [2**62, 30], "datatype": "FP32", "data": []}]}), {400}),
    ("oip-rank", lambda: oip("fraud-mlp", {"inputs": [{"name": "features", "shape": [1] * 10000, "datatype": "FP32", "data": [1]}]}), {400}),
    ("bad-ctype", lambda: request("POST", "/invocations", b"x", {"Content-Type": "application/x-nope"}), {415}),
    ("too-big", lambda: csv("fraud-xgb", "1," * (4 << 20)), {413}),
    ("no-auth", lambda: request("POST", "/invocations", (ROW + "\n").encode(), {"Content-Type": "text/csv"}, auth=False), {401}),
    ("unknown-model", lambda: csv("ghost", ROW + "\n"), {404}),
    ("non-ascii-model", lambda: request("POST", "/invocations", (ROW + "\n").encode(),
                                        {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "g\u00e9".encode().decode("latin-1")}), {400}),
    ("method", lambda: request("DELETE", "/ping"), {405}),
    ("long-path", lambda: request("GET", "/" + "p" * 100000), {414}),
    ("many-headers", lambda: request("GET", "/ping", headers={f"X-H{i}": "v" for i in range(200)}), {431}),
    ("bad-line", lambda: b"NOT A REQUEST\r\n\r\n", {400}),
    ("bad-length", lambda: b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", {400}),
    # lies and hang-ups: the answer does not matter, the server must not mind
    ("short-body", lambda: b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 100\r\n\r\n1,2", None),
    ("hang-up", lambda: request("POST", "/invocations", (ROW + "\n").encode(), {"Content-Type": "text/csv"})[:40], None),
    ("slowloris", lambda: b"GET /ping HTTP/1.1\r\nHost: x\r\n", None),
]


async def read_response(reader, timeout):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    closing = b"connection: close" in head.lower()
    return status, body, closing


class Stats:
    def __init__(self):
        self.by_kind = {}
        self.wrong = []
        self.slow_valid = 0

    def add(self, kind, outcome):
        d = self.by_kind.setdefault(kind, {})
        d[outcome] = d.get(outcome, 0) + 1


async def worker(i, port, end, stats, rng):
    reader = writer = None
    while time.time() < end:
        bad = rng.random() < 0.35
        kind, make, want = rng.choice(MALFORMED if bad else VALID)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(make())
            await writer.drain()
            if want is None:
                # a client that lies or goes away: drop the connection
                if kind == "slowloris":
                    await asyncio.sleep(rng.uniform(0.5, 3))
                writer.close()
                reader = writer = None
                stats.add(kind, "dropped")
                continue
            t = time.time()
            status, body, closing = await read_response(reader, 15)
            took = time.time() - t
            stats.add(kind, status)
            if status not in want:
                stats.wrong.append((kind, status, body[:200].decode("utf-8", "replace")))
            if status >= 400 and not body.startswith(b"{"):
                stats.wrong.append((kind, status, "not a JSON error body: " + body[:80].decode("utf-8", "replace")))
            if not bad and took > 5:
                stats.slow_valid += 1
            if closing or status in (400, 413, 414, 431):
                writer.close()
                reader = writer = None
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            stats.add(kind, type(e).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None


def proc_stat(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def monitor(proc, port, end, samples, wedges):
    while time.time() < end:
        await asyncio.sleep(5)
        if proc.poll() is not None:
            return
        t = time.time()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /ping HTTP/1.1\r\nHost: m\r\n\r\n")
            await w.drain()
            status, _, _ = await read_response(r, 2)
            w.close()
            ok = status == 200
        except Exception:
            ok = False
        rss, fds = proc_stat(proc.pid)
        samples.append({"t": round(t - (end - SECONDS), 1), "rss_kb": rss, "fds": fds, "ping_ms": round((time.time() - t) * 1000, 1), "ping_ok": ok})
        if not ok:
            wedges.append(samples[-1])


async def main():
    os.makedirs(WORK, exist_ok=True)
    ep = {"EndpointName": "soak", "EndpointConfigName": "soak-cfg",
          "Models": [{"ModelName": "xgb", "PrimaryContainer": {"ModelDataUrl": os.path.join(WORK, "fraud-xgb.neo")}},
                     {"ModelName": "xgb2", "PrimaryContainer": {"ModelDataUrl": os.path.join(WORK, "fraud-xgb.neo")}}],
          "ProductionVariants": [{"VariantName": "A", "ModelName": "xgb", "InitialVariantWeight": 1},
                                 {"VariantName": "B", "ModelName": "xgb2", "InitialVariantWeight": 1}],
          "ShadowProductionVariants": [{"VariantName": "S", "ModelName": "xgb2", "InitialVariantWeight": 0.5}],
          "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 100,
                                "DestinationS3Uri": "file://" + os.path.join(WORK, "capture"),
                                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}}
    json.dump(ep, open(os.path.join(WORK, "endpoint.json"), "w"))
    args = [NEORUN, "serve", *(os.path.join(WORK, b) for b in ("fraud-xgb.neo", "fraud-mlp.neo", "mod.neo")),
            "--trusted-key", os.path.join(WORK, "k.pub"), "--port", "0", "--state-dir", os.path.join(WORK, "state"),
            "--endpoint", os.path.join(WORK, "endpoint.json"), "--max-batch", "16", "--max-queue-delay", "1",
            "--auth-token", TOKEN, "--header-timeout", "2", "--max-connections", "256", "--timeout", "10"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(os.path.join(WORK, "server.log"), "w"), text=True)
    line = proc.stdout.readline()
    port = int(line.strip().rsplit(":", 1)[1])
    end = time.time() + SECONDS
    stats, samples, wedges = Stats(), [], []
    rngs = [random.Random(1000 + i) for i in range(CONNS)]
    start_rss, start_fds = proc_stat(proc.pid)
    await asyncio.gather(monitor(proc, port, end, samples, wedges),
                         *(worker(i, port, end, stats, rngs[i]) for i in range(CONNS)))
    crashed = proc.poll() is not None
    exit_code = proc.returncode
    if not crashed:
        proc.terminate()
        proc.wait(timeout=30)
    rss = [s["rss_kb"] for s in samples]
    minute = max(1, 60 // 5)
    first, last = statistics.median(rss[:minute]) if rss else 0, statistics.median(rss[-minute:]) if rss else 0
    total = sum(sum(v.values()) for v in stats.by_kind.values())
    result = {"seconds": SECONDS, "connections": CONNS, "requests": total, "by_kind": stats.by_kind,
              "wrong_answers": len(stats.wrong), "wrong_examples": stats.wrong[:20], "slow_valid": stats.slow_valid,
              "crashed": crashed, "exit_code_during_run": exit_code if crashed else None, "wedges": len(wedges),
              "rss_kb": {"start": start_rss, "first_minute_median": first, "last_minute_median": last, "max": max(rss, default=0)},
              "fds": {"start": start_fds, "end": samples[-1]["fds"] if samples else None, "max": max((s["fds"] for s in samples), default=0)},
              "samples": samples}
    json.dump(result, open(OUT, "w"), indent=1)
    print(f"{total} requests over {SECONDS} s on {CONNS} connections ({total / SECONDS:.0f}/s), "
          f"wrong answers {len(stats.wrong)}, valid requests slower than 5 s {stats.slow_valid}")
    print(f"crashed: {crashed}; wedges (a /ping not answered in 2 s): {len(wedges)} of {len(samples)} checks")
    print(f"RSS: start {start_rss / 1024:.1f} MB, first-minute median {first / 1024:.1f} MB, "
          f"last-minute median {last / 1024:.1f} MB, max {max(rss, default=0) / 1024:.1f} MB; "
          f"fds: start {start_fds}, end {result['fds']['end']}, max {result['fds']['max']}")
    for kind, outcomes in sorted(stats.by_kind.items()):
        print(f"  {kind:16} {outcomes}")
    for w in stats.wrong[:10]:
        print("  wrong:", w)
    bad = crashed or wedges or stats.wrong or stats.slow_valid
    sys.exit(1 if bad else 0)


asyncio.run(main())
