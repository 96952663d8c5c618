#!/usr/bin/env python3
"""An endpoint with two production variants and data capture at 100% vs the
same bundle served alone, under wrk at 1, 8 and 64 connections; and what
capture wrote and dropped. See endpoints.sh."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

DUR, OUT = int(sys.argv[1]), sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEORUN = os.path.join(ROOT, "target/release/neorun")
WORK = os.path.join(ROOT, "bench/out/endpoints")
BUNDLE = os.path.join(ROOT, "bench/out/fraud-xgb.neo")
ROW = open(os.path.join(ROOT, "models/fraud-xgb/sample.csv")).read().splitlines()[0] + "\n"


def wait(url):
    for _ in range(500):
        try:
            if urllib.request.urlopen(url + "/ping").status == 200:
                return
        except Exception:
            time.sleep(0.02)
    raise SystemExit(f"{url} did not come up")


def wrk(url, conns):
    lua = os.path.join(WORK, "post.lua")
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(ROW)}\nwrk.headers["Content-Type"] = "text/csv"\n')
    r = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{DUR}s", "--latency", "-s", lua, url],
                       capture_output=True, text=True, check=True).stdout
    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", r)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", r)
    total = int(re.search(r"(\d+) requests in", r).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", r).group(1)), "p50_ms": lat(50), "p99_ms": lat(99),
            "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0}


def metric(text, prefix):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)


def declare(path, variants, capture):
    doc = {
        "EndpointName": "ep", "EndpointConfigName": "ep-config",
        "Models": [{"ModelName": "xgb", "PrimaryContainer": {"ModelDataUrl": BUNDLE}}],
        "ProductionVariants": [{"VariantName": v, "ModelName": "xgb", "InitialVariantWeight": 1} for v in variants],
    }
    if capture:
        doc["DataCaptureConfig"] = {"InitialSamplingPercentage": 100, "DestinationS3Uri": os.path.join(WORK, "capture"),
                                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                                    "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}}
    json.dump(doc, open(path, "w"))
    return path


decl = declare(os.path.join(WORK, "ep.json"), ["A", "B"], True)
one = declare(os.path.join(WORK, "one.json"), ["A"], False)
two = declare(os.path.join(WORK, "two.json"), ["A", "B"], False)
systems = {
    "bundle alone (/invocations)": ([NEORUN, "serve", BUNDLE, "--allow-unsigned", "--port", "18091"], "/invocations"),
    "endpoint, 1 variant": ([NEORUN, "serve", "--endpoint", one, "--allow-unsigned", "--port", "18093"], "/endpoints/ep/invocations"),
    "endpoint, 2 variants": ([NEORUN, "serve", "--endpoint", two, "--allow-unsigned", "--port", "18094"], "/endpoints/ep/invocations"),
    "endpoint, 2 variants, capture 100%": ([NEORUN, "serve", "--endpoint", decl, "--allow-unsigned", "--port", "18092"],
                                           "/endpoints/ep/invocations"),
}
rows = []
for conns in (1, 8, 64):
    for name, (cmd, path) in systems.items():
        port = cmd[cmd.index("--port") + 1]
        base = f"http://127.0.0.1:{port}"
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(base)
            wrk(base + path, conns)  # warm-up
            before = urllib.request.urlopen(base + "/metrics").read().decode()
            r = wrk(base + path, conns)
            time.sleep(1.0)
            after = urllib.request.urlopen(base + "/metrics").read().decode()
            r["captured"] = metric(after, "neorun_capture_records_total") - metric(before, "neorun_capture_records_total")
            r["capture_dropped"] = metric(after, "neorun_capture_dropped_total") - metric(before, "neorun_capture_dropped_total")
            r.update(system=name, conns=conns)
            rows.append(r)
        finally:
            p.terminate()
            p.wait()

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}, {os.cpu_count()} CPUs; wrk {DUR}s per cell after a warm-up run; fraud-xgb, one CSV row per request")
print(f"{'system':38} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'captured/s':>11} {'dropped':>8} {'non-2xx':>8}")
for r in rows:
    print(f"{r['system']:38} {r['conns']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
          f"{r['captured'] / DUR:>11.0f} {r['capture_dropped']:>8.0f} {r['non2xx']:>8}")
for conns in (1, 8, 64):
    a = next(r for r in rows if r["conns"] == conns and r["system"].startswith("bundle"))
    b = next(r for r in rows if r["conns"] == conns and r["system"].endswith("capture 100%"))
    print(f"{conns:>3} conns: endpoint/alone  p50 {b['p50_ms'] / a['p50_ms']:.2f}x  p99 {b['p99_ms'] / a['p99_ms']:.2f}x  "
          f"throughput {b['rps'] / a['rps']:.2f}x")
json.dump(rows, open(OUT, "w"), indent=1)
