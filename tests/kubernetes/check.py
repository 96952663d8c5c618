"""Checks contrib/kubernetes/: every manifest of a built-in kind against the
Kubernetes schemas (kubernetes-validate --strict, which has no schemas for
KServe's custom resources), and the KServe ones against what the container
test runs: the ServingRuntime starts `neorun container serve --model-dir
/mnt/models` on 8080 with OIP v2, and the InferenceService names that runtime
and its model format. Prints one JSON document; exits 1 on a failure."""
import glob
import json
import subprocess
import sys

import yaml

root = sys.argv[1]
files = sorted(glob.glob(root + "/contrib/kubernetes/*.yaml"))
out = {"files": files, "failures": []}
fail = out["failures"].append

v = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *files], capture_output=True, text=True)
out["validate"] = (v.stdout + v.stderr).splitlines()
if v.returncode != 0:
    fail("kubernetes-validate: " + v.stdout + v.stderr)
for line in out["validate"]:
    if line.startswith("WARN") and "ServingRuntime" not in line and "InferenceService" not in line:
        fail(line)

docs = [d for f in files for d in yaml.safe_load_all(open(f)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
out["kinds"] = sorted(by_kind)
for kind in ("ServingRuntime", "InferenceService", "Deployment", "Service", "HorizontalPodAutoscaler"):
    if kind not in by_kind:
        fail(f"no {kind}")

rt = by_kind["ServingRuntime"][0]
c = rt["spec"]["containers"][0]
if c["args"][:3] != ["serve", "--model-dir", "/mnt/models"]:
    fail(f"ServingRuntime args {c['args']}: the container test runs serve --model-dir /mnt/models")
if [p["containerPort"] for p in c["ports"]] != [8080]:
    fail("ServingRuntime must expose 8080")
if rt["spec"]["protocolVersions"] != ["v2"]:
    fail("ServingRuntime speaks OIP v2")
if c["readinessProbe"]["httpGet"]["path"] != "/v2/health/ready":
    fail("ServingRuntime readiness is OIP's /v2/health/ready")
if c["securityContext"].get("runAsUser") != 65532:
    fail("ServingRuntime runs as the image's user 65532")
fmt = rt["spec"]["supportedModelFormats"][0]

isvc = by_kind["InferenceService"][0]["spec"]["predictor"]["model"]
if isvc["runtime"] != rt["metadata"]["name"]:
    fail(f"InferenceService runtime {isvc['runtime']} is not {rt['metadata']['name']}")
if isvc["modelFormat"]["name"] != fmt["name"] or isvc["modelFormat"]["version"] != fmt["version"]:
    fail("InferenceService modelFormat differs from the runtime's")
if isvc.get("protocolVersion") != "v2":
    fail("InferenceService protocolVersion v2")

dep = by_kind["Deployment"][0]["spec"]["template"]["spec"]
dc = dep["containers"][0]
if dc["readinessProbe"]["httpGet"]["path"] != "/ping":
    fail("Deployment readiness is SageMaker's /ping")
mounts = {m["mountPath"] for m in dc["volumeMounts"]}
if not {"/opt/ml/model", "/tmp"} <= mounts:
    fail(f"Deployment mounts {mounts}: the model at /opt/ml/model and a writable /tmp (the root is read-only)")
hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]
names = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
if names != ["neorun_queue_waiting"]:
    fail(f"HPA metrics {names}")
adapter = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["config.yaml"])
if adapter["rules"][0]["name"]["matches"] != "neorun_queue_waiting":
    fail("the adapter rule must expose neorun_queue_waiting")
print(json.dumps(out))
sys.exit(1 if out["failures"] else 0)
