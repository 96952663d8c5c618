#!/usr/bin/env python3
"""`neorun batch` vs a Python ONNX Runtime loop doing the same job: read a
CSV file, score every row, write one CSV line per row in input order.

Usage: bench.py NEORUN ROWS OUT_JSON

A third column runs the same job as a SageMaker batch transform job: boto3's
`create_transform_job` against `neorun serve --state-dir` (its control
plane), the CSV in an S3-compatible store (moto's server on 127.0.0.1 — an
emulator, so this column includes moto's own cost of serving and storing
the objects), from the create call until DescribeTransformJob says
Completed.

The peer reads with pyarrow.csv (multithreaded C++ parser) in blocks, runs
onnxruntime's InferenceSession on each block (intra-op threads = the CPUs),
and writes with pyarrow.csv.write_csv: the fastest way to do this in Python
that we know of. neorun runs as the real binary, `--max-concurrent-transforms`
= the CPUs, one inference thread per run. Wall time of the whole job, file
to file, rounds alternating; the median over rounds is reported. The outputs
are compared (every probability within 1e-5).
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROUNDS = int(os.environ.get("ROUNDS", "3"))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


PEER = r"""
import sys, numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.csv as pc
onnx_path, src, dst, threads, output = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
reader = pc.open_csv(src, read_options=pc.ReadOptions(autogenerate_column_names=True, block_size=8 << 20),
                     convert_options=pc.ConvertOptions(column_types={f"f{i}": pa.float32() for i in range(30)}))
writer = None
with open(dst, "wb") as f:
    for batch in reader:
        x = np.column_stack([c.to_numpy() for c in batch.columns]).astype(np.float32, copy=False)
        y = sess.run([output], {name: x})[0]
        if isinstance(y, list):  # ZipMap
            y = np.array([[d[k] for k in sorted(d)] for d in y], dtype=np.float32)
        y = np.asarray(y, dtype=np.float32).reshape(len(x), -1)
        t = pa.table({f"p{j}": y[:, j] for j in range(y.shape[1])})
        pc.write_csv(t, f, write_options=pc.WriteOptions(include_header=False))
"""


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformJobs:
    """moto's S3 server and `neorun serve` with a control plane, for the
    create_transform_job column; the input uploaded once."""

    def __init__(self, neorun, src, work):
        import boto3
        self.work = os.path.abspath(work)
        self.src_name = src
        venv_bin = os.path.dirname(sys.executable)
        port = free_port()
        self.s3_url = f"http://127.0.0.1:{port}"
        self.moto = subprocess.Popen([f"{venv_bin}/moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        s3_env = {"AWS_ENDPOINT_URL": self.s3_url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_REGION": "us-east-1"}
        for _ in range(300):
            try:
                self.s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                                       aws_access_key_id="testing", aws_secret_access_key="testing")
                self.s3.list_buckets()
                break
            except Exception:
                time.sleep(0.1)
        self.s3.create_bucket(Bucket="bench")
        self.s3.upload_file(src, "bench", "in/" + os.path.basename(src))
        creds = f"{self.work}/creds"
        open(creds, "w").write("[default]\naws_access_key_id = AKIDBENCH\naws_secret_access_key = bench-secret\n")
        state = f"{self.work}/state"
        subprocess.run(["rm", "-rf", state], check=True)
        env = dict(os.environ, **s3_env)
        self.server = subprocess.Popen([neorun, "serve", "--state-dir", state, "--access-keys", creds, "--allow-unsigned",
                                        "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        base = self.server.stdout.readline().decode().strip().removeprefix("listening on ")
        self.sm = boto3.client("sagemaker", endpoint_url=base, region_name="us-east-1", aws_access_key_id="AKIDBENCH",
                               aws_secret_access_key="bench-secret")
        self.n = 0

    def run(self, bundle, cpus):
        """Seconds from create_transform_job to Completed."""
        self.n += 1
        model = f"m{self.n}"
        self.sm.create_model(ModelName=model, PrimaryContainer={"ModelDataUrl": os.path.abspath(bundle)})
        t0 = time.perf_counter()
        self.sm.create_transform_job(
            TransformJobName=f"job{self.n}", ModelName=model, MaxConcurrentTransforms=cpus,
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bench/in/"}},
                            "ContentType": "text/csv", "SplitType": "Line"},
            TransformOutput={"S3OutputPath": f"s3://bench/out{self.n}/", "AssembleWith": "Line"},
            TransformResources={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1})
        while True:
            d = self.sm.describe_transform_job(TransformJobName=f"job{self.n}")
            if d["TransformJobStatus"] != "InProgress":
                break
            time.sleep(0.05)
        dt = time.perf_counter() - t0
        assert d["TransformJobStatus"] == "Completed", d.get("FailureReason")
        self.s3.delete_object(Bucket="bench", Key=f"out{self.n}/" + os.path.basename(self.src_name) + ".out")
        return dt

    def close(self):
        for p in (self.server, self.moto):
            p.kill()
            p.wait()


def main():
    neorun, rows, out_json = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cpus = len(os.sched_getaffinity(0))
    work = "bench/out/batch"
    os.makedirs(work, exist_ok=True)
    base = np.loadtxt("models/fraud-mlp/sample.csv", delimiter=",", dtype=np.float32)
    rng = np.random.default_rng(0)
    src = f"{work}/in-{rows}.csv"
    if not os.path.exists(src):
        with open(src + ".tmp", "w") as f:
            for start in range(0, rows, 100_000):
                n = min(100_000, rows - start)
                x = base[(np.arange(n) + start) % len(base)] * (1 + rng.normal(0, 0.05, (n, 30))).astype(np.float32)
                np.savetxt(f, x, delimiter=",", fmt="%.7g")
        os.rename(src + ".tmp", src)
    size_mb = os.path.getsize(src) / 1e6
    results = []
    jobs = TransformJobs(neorun, src, work)
    for model, output in (("fraud-xgb", "probabilities"), ("fraud-mlp", "probabilities")):
        bundle = f"bench/out/{model}.neo"
        onnx_path = f"models/{model}/model.onnx"
        import onnxruntime as ort
        outs = [o.name for o in ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_outputs()]
        output = "probabilities" if "probabilities" in outs else outs[-1]
        times = {"neorun": [], "onnxruntime": [], "transform_job": []}
        for r in range(ROUNDS):
            order = ["neorun", "onnxruntime", "transform_job"] if r % 2 == 0 else ["transform_job", "onnxruntime", "neorun"]
            for who in order:
                if who == "transform_job":
                    times[who].append(jobs.run(bundle, cpus))
                    continue
                if who == "neorun":
                    out_dir = f"{work}/out-{model}"
                    subprocess.run(["rm", "-rf", out_dir], check=True)
                    cmd = [neorun, "batch", bundle, "--allow-unsigned", "-i", src, "-o", out_dir, "-q",
                           "--max-concurrent-transforms", str(cpus)]
                else:
                    cmd = [sys.executable, "-c", PEER, onnx_path, src, f"{work}/peer-{model}.csv", str(cpus), output]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True)
                times[who].append(time.perf_counter() - t0)
        # the same answers: neorun's last columns are the probabilities
        ours = np.loadtxt(f"{work}/out-{model}/in-{rows}.csv.out", delimiter=",", dtype=np.float64, max_rows=20000)
        theirs = np.loadtxt(f"{work}/peer-{model}.csv", delimiter=",", dtype=np.float64, max_rows=20000)
        ours = ours.reshape(len(ours), -1)[:, -theirs.reshape(len(theirs), -1).shape[1]:]
        diff = float(np.max(np.abs(ours - theirs.reshape(ours.shape))))
        n_lines = sum(1 for _ in open(f"{work}/out-{model}/in-{rows}.csv.out"))
        assert n_lines == rows, (n_lines, rows)
        med = {k: statistics.median(v) for k, v in times.items()}
        results.append({
            "model": model, "rows": rows, "input_mb": round(size_mb, 1),
            "neorun_s": med["neorun"], "onnxruntime_s": med["onnxruntime"],
            "neorun_rows_per_s": rows / med["neorun"], "onnxruntime_rows_per_s": rows / med["onnxruntime"],
            "transform_job_s": med["transform_job"], "transform_job_rows_per_s": rows / med["transform_job"],
            "speedup": med["onnxruntime"] / med["neorun"], "max_abs_diff_first_20000": diff,
            "rounds": times,
        })
    jobs.close()
    host = {"cpu": cpu_name(), "cpus": cpus}
    json.dump({"host": host, "results": results}, open(out_json, "w"), indent=2)
    print(f"CPU: {host['cpu']}, {cpus} CPUs; {rows:,} rows, {size_mb:.0f} MB CSV; median of {ROUNDS} rounds, file to file")
    print(f"{'model':<10} {'neorun batch rows/s':>20} {'ORT+pyarrow rows/s':>19} {'ratio':>7} "
          f"{'transform job (S3: moto) rows/s':>32} {'max |diff|':>11}")
    for r in results:
        print(f"{r['model']:<10} {r['neorun_rows_per_s']:>20,.0f} {r['onnxruntime_rows_per_s']:>19,.0f} "
              f"{r['speedup']:>6.2f}x {r['transform_job_rows_per_s']:>32,.0f} {r['max_abs_diff_first_20000']:>11.2g}")


if __name__ == "__main__":
    main()
