#!/usr/bin/env python3
"""Drives wrk against neorun serve and the ORT+FastAPI peer; see run.sh."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

DUR, PY, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEORUN = os.path.join(ROOT, "target/release/neorun")
MODELS = {
    "fraud-xgb": ("text/csv", open(os.path.join(ROOT, "models/fraud-xgb/sample.csv")).read().splitlines()[0] + "\n"),
    "fraud-mlp": ("text/csv", open(os.path.join(ROOT, "models/fraud-mlp/sample.csv")).read().splitlines()[0] + "\n"),
    "image-cnn": ("application/json", json.dumps(json.load(open(os.path.join(ROOT, "models/image-cnn/sample.json"))))),
}


def wait(url):
    for _ in range(500):
        try:
            if urllib.request.urlopen(url + "/ping").status == 200:
                return
        except Exception:
            time.sleep(0.02)
    raise SystemExit(f"{url} did not come up")


def wrk(url, ctype, body, conns):
    lua = os.path.join(ROOT, "bench/out/post.lua")
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "{ctype}"\n')
    r = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{DUR}s", "--latency", "-s", lua, url + "/invocations"],
                       capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r).group(1))
    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", r)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", r)
    errors = re.search(r"Socket errors: (.*)", r)
    return {"rps": rps, "p50_ms": lat(50), "p99_ms": lat(99), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else ""}


rows = []
for model, (ctype, body) in MODELS.items():
    onnx = os.path.join(ROOT, "models", model, "model.onnx")
    systems = {
        "neorun": [NEORUN, "serve", f"bench/out/{model}.neo", "--allow-unsigned", "--port", "18081"],
        "neorun-nobatch": [NEORUN, "serve", f"bench/out/{model}.neo", "--allow-unsigned", "--port", "18082", "--max-batch", "1"],
        "ort-fastapi": [PY, os.path.join(ROOT, "bench/peers/ort_fastapi.py"), onnx, "18083"],
    }
    for conns in (1, 8, 64):
        for name, cmd in systems.items():
            port = cmd[-1] if name == "ort-fastapi" else cmd[cmd.index("--port") + 1]
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}"
                wait(url)
                res = wrk(url, ctype, body, conns)
            finally:
                p.terminate()
                p.wait()
            res.update({"model": model, "system": name, "connections": conns})
            rows.append(res)
            print(f"{model:10} c={conns:<3} {name:15} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  non-2xx {res['non2xx']}", flush=True)

print("\nratios neorun / ort-fastapi (throughput; p99 ours vs peer)")
for model in MODELS:
    for conns in (1, 8, 64):
        get = lambda s: next(r for r in rows if r["model"] == model and r["system"] == s and r["connections"] == conns)
        a, b, c = get("neorun"), get("neorun-nobatch"), get("ort-fastapi")
        print(f"{model:10} c={conns:<3} batching {a['rps'] / c['rps']:5.1f}x (p99 {a['p99_ms']:.2f} vs {c['p99_ms']:.2f} ms)   no batching {b['rps'] / c['rps']:5.1f}x (p99 {b['p99_ms']:.2f} ms)")
json.dump({"schema_version": 1, "seconds": DUR, "rows": rows}, open(OUT, "w"), indent=1)
