#!/usr/bin/env python3
"""Guarded rollouts under load; see rollouts.sh. Blue is r = a + b, green
r = a mod b (which fails on a zero divisor), as in tests/tests/rollouts.rs;
the updates are driven by tests/serve/rollouts.py (stock boto3)."""
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

RUNS, OUT = int(sys.argv[1]), sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
WORK = os.path.join(ROOT, "bench/out/rollouts")
TOKEN = "bench-token"

shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
import numpy as np, onnx  # noqa: E402
from onnx import helper, TensorProto, numpy_helper  # noqa: E402

for name, op in [("add", "Add"), ("mod", "Mod")]:
    d = os.path.join(WORK, name)
    os.makedirs(d + "/test_data_set_0")
    io = [helper.make_tensor_value_info(n, TensorProto.INT32, ["N", 2]) for n in "abr"]
    m = helper.make_model(helper.make_graph([helper.make_node(op, ["a", "b"], ["r"])], name, io[:2], io[2:]),
                          opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(m, f"{d}/{name}.onnx")
    x, y = np.array([[7, -7]], np.int32), np.array([[3, 3]], np.int32)
    for i, (n, t) in enumerate([("a", x), ("b", y)]):
        open(f"{d}/test_data_set_0/input_{i}.pb", "wb").write(numpy_helper.from_array(t, n).SerializeToString())
    r = x + y if op == "Add" else np.mod(x, y)
    open(f"{d}/test_data_set_0/output_0.pb", "wb").write(numpy_helper.from_array(r, "r").SerializeToString())
    subprocess.run(["tar", "czf", f"../{name}.tar.gz", f"{name}.onnx", "test_data_set_0"], cwd=d, check=True)
    subprocess.run([ROOT + "/target/release/neoc", "compile", f"{name}.tar.gz", "--target", "host", "--unsigned",
                    "-o", f"{name}.neo", "-q"], cwd=WORK, check=True)
shutil.copy(f"{WORK}/mod.neo", f"{WORK}/badtest.neo")
open(f"{WORK}/creds", "w").write("[default]\naws_access_key_id = AKIDNEORUNTEST\naws_secret_access_key = neorun/test+secret\n")
json.dump([{"AlarmName": "green-5xx", "MetricName": "Invocation5XXErrors", "Statistic": "Average",
            "Dimensions": [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "Green"}],
            "Period": 1, "EvaluationPeriods": 1, "Threshold": 0.05, "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching"}], open(f"{WORK}/alarms.json", "w"))
server = subprocess.Popen([ROOT + "/target/release/neorun", "serve", "--allow-unsigned", "--port", "0",
                           "--state-dir", "state", "--access-keys", "creds", "--auth-token", TOKEN,
                           "--alarms", "alarms.json"], cwd=WORK, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
base = server.stdout.readline().strip().removeprefix("listening on ")


def drive(mode, arg):
    out = subprocess.run([PY, ROOT + "/tests/serve/rollouts.py", mode, base, WORK, json.dumps(arg)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def bg(routing, **kw):
    d = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, "MaximumExecutionTimeoutInSeconds": 600}}
    d["BlueGreenUpdatePolicy"].update(kw)
    return d


LINEAR = bg({"Type": "LINEAR", "WaitIntervalInSeconds": 1, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20}})
CANARY = bg({"Type": "CANARY", "WaitIntervalInSeconds": 2, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}})
ALL = bg({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 2})
GUARDED = dict(copy.deepcopy(LINEAR), AutoRollbackConfiguration={"Alarms": [{"AlarmName": "green-5xx"}]})
GUARDED["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] = 3


def summary(run):
    reqs = run["requests"]
    during = [r for r in reqs if r[0] >= run["started"]]
    lat = sorted((r[1] - r[0]) * 1000 for r in during)
    failed = [r for r in reqs if not r[3]]
    out = {"requests": len(reqs), "failed": len(failed),
           "failed_on_blue": sum(1 for r in failed if r[2] == "Blue"),
           "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)]}
    back = [e for e in run["journal"] if e["op"] == "DeploymentRolledBack"]
    if back:
        d = back[0]["detail"]
        out["alarm_to_blue_s"] = d.get("seconds_from_alarm_to_blue")
        out["first_failure_to_blue_s"] = d["blue_at"] - min(r[1] for r in failed)
    return out


drive("setup", {})
results = {"linear": [], "canary": [], "all_at_once": [], "rollback": []}
for _ in range(RUNS):
    results["linear"].append(summary(drive("rollout", {"to": "v2", "deployment": LINEAR})))
    results["all_at_once"].append(summary(drive("rollout", {"to": "v1", "deployment": ALL})))
    results["canary"].append(summary(drive("rollout", {"to": "v2", "deployment": CANARY})))
    drive("rollout", {"to": "v1", "deployment": ALL})
    time.sleep(2)  # the alarm back to OK
    results["rollback"].append(summary(drive("rollout", {"to": "v2", "deployment": GUARDED, "zero_share": 0.3})))
server.terminate()
server.wait()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}, {os.cpu_count()} CPUs; 8 boto3 clients; {RUNS} runs each, medians")
print("(failed in a rollback: green's answers to zero divisors before it; latency is the boto3 client's, GIL-bound)")
print(f"{'update':<14}{'requests':>10}{'failed':>8}{'blue failed':>12}{'p50 ms':>8}{'p99 ms':>8}{'alarm→blue s':>14}{'1st 5xx→blue s':>16}")
med = lambda rows, k: statistics.median(r[k] for r in rows) if rows and rows[0].get(k) is not None else None
for kind, rows in results.items():
    f = lambda k, fmt: (fmt % med(rows, k)) if med(rows, k) is not None else "-"
    print(f"{kind:<14}{f('requests', '%d'):>10}{f('failed', '%d'):>8}{f('failed_on_blue', '%d'):>12}"
          f"{f('p50_ms', '%.2f'):>8}{f('p99_ms', '%.2f'):>8}{f('alarm_to_blue_s', '%.3f'):>14}{f('first_failure_to_blue_s', '%.3f'):>16}")
json.dump({"cpu": cpu, "runs": results}, open(OUT, "w"), indent=1)
