"""Spark local mode (local[2]): contrib/spark/score.py's predict_batch_udf
with neorun inside, next to the same UDF with onnxruntime inside, on the
same N-row CSV; rows/s of each job (read, score, write to Spark's `noop`
sink), rounds alternating, medians; then the neorun job's output written
and compared with `neorun batch` on the same file.

    spark_bench.py NEORUN_BIN BUNDLE ONNX ROWS OUT.json"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../contrib/spark"))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
from score import score  # noqa: E402

neorun_bin, bundle, onnx_path, n, out_json = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
rounds = int(os.environ.get("ROUNDS", "3"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
work = tempfile.mkdtemp(prefix="spark-bench-")
rows = open("models/fraud-xgb/sample.csv").read().split()
with open(f"{work}/rows.csv", "w") as f:
    for i in range(n):
        f.write(rows[i % len(rows)] + "\n")

from pyspark.ml.functions import predict_batch_udf  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.functions import array, col  # noqa: E402
from pyspark.sql.types import ArrayType, FloatType, StructField, StructType  # noqa: E402

spark = SparkSession.builder.master("local[2]").appName("bench").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
schema = StructType([StructField(f"f{i}", FloatType()) for i in range(30)])
features = [f"f{i}" for i in range(30)]


def df():
    return spark.read.csv(f"{work}/rows.csv", schema=schema)


def ort_fn():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name

    def predict(x):
        return np.asarray(s.run(None, {name: x.astype(np.float32)})[-1], dtype=np.float32)

    return predict


def ort_scored():
    udf = predict_batch_udf(ort_fn, return_type=ArrayType(FloatType()), batch_size=8192,
                            input_tensor_shapes=[[30]])
    return df().withColumn("prediction", udf(array(*[col(c) for c in features])))


def job(make):
    t0 = time.perf_counter()
    make().write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t0


key = os.environ.get("NEORUN_BENCH_KEY")
# warm up the JVM, the Python workers and each UDF's model before timing
for make in (lambda: score(spark, df().limit(20000), bundle, key, features), lambda: ort_scored().limit(20000)):
    make().write.format("noop").mode("overwrite").save()
times = {"neorun": [], "onnxruntime": []}
for _ in range(rounds):
    times["neorun"].append(job(lambda: score(spark, df(), bundle, key, features)))
    times["onnxruntime"].append(job(ort_scored))
res = {k: n / statistics.median(v) for k, v in times.items()}

# equal to neorun batch
score(spark, df(), bundle, key, features).select("prediction").write.mode("overwrite").json(f"{work}/scored")
parts = sorted(p for p in os.listdir(f"{work}/scored") if p.endswith(".json"))
got = [json.loads(line)["prediction"] for p in parts for line in open(f"{work}/scored/{p}")]
subprocess.run([neorun_bin, "batch", bundle, "--trusted-key", key, "-i", f"{work}/rows.csv", "-o", f"{work}/batch", "-q"],
               check=True)
want = [list(map(float, line.split(",")[1:])) for line in open(f"{work}/batch/rows.csv.out")]
assert len(got) == len(want) == n, (len(got), len(want))
diff = float(np.max(np.abs(np.array(got, dtype=np.float64) - np.array(want, dtype=np.float64))))
print(f"CPU: {cpu}; Spark local[2], {n} rows, medians of {rounds} rounds (read CSV, score, noop sink)")
print(f"  neorun UDF      {res['neorun']:>12,.0f} rows/s")
print(f"  onnxruntime UDF {res['onnxruntime']:>12,.0f} rows/s   (neorun / onnxruntime {res['neorun'] / res['onnxruntime']:.2f}x)")
print(f"  {n} predictions equal to neorun batch: max abs difference {diff:.2e}")
assert diff < 1e-6
json.dump({"cpu": cpu, "rows": n, "rows_per_s": res, "seconds": times, "max_abs_diff_vs_batch": diff},
          open(out_json, "w"), indent=1)
spark.stop()
