"""Scores a CSV (or any DataFrame) with a neoc bundle on Spark, through
pyspark.ml.functions.predict_batch_udf: each executor's Python worker opens
(verifies) the bundle once, then gets Arrow batches as numpy arrays.

    spark-submit contrib/spark/score.py --bundle fraud-xgb.neo --key team.pub \\
        --input rows.csv --output scored/ [--features f0,f1,...] [--output-name probabilities]
    (or: python contrib/spark/score.py ... --master local[2])

The bundle and key are shipped to the executors with SparkContext.addFile
(or give paths every executor can read: a shared file system). The output
has the input's columns and `prediction` (an array per row), written as
CSV with the array joined by `;`. Exits non-zero with the task's error when
a column is not numeric or the bundle cannot be opened.
"""
import argparse
import os
import sys

import numpy as np


def make_predict_fn(bundle, key, features, output_name, load_log=None):
    """predict_batch_udf's factory: runs once per Python worker process."""

    def make():
        import neorun  # imported on the executor

        from pyspark import SparkFiles

        def local(p):
            # a file shipped with addFile, else a path the executor can read
            shipped = SparkFiles.get(os.path.basename(p))
            return shipped if os.path.exists(shipped) else p

        model = neorun.Model(local(bundle), trusted_key=local(key))
        if load_log:
            with open(load_log, "a") as f:
                f.write(f"{os.getpid()}\n")
        spec = model.inputs[0]

        def predict(x):
            if x.dtype.kind not in "fiub":
                raise TypeError(f"features of dtype {x.dtype}: the model's input {spec['name']!r} takes {spec['dtype']}")
            return model.predict(x)[output_name]

        return predict

    return make


def score(spark, df, bundle, key, features, output_name="probabilities", batch_size=8192, load_log=None):
    """`df` with a `prediction` column (an array of floats per row). A feature
    column that is not numeric is refused here, naming it, before any task runs."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.functions import array, col
    from pyspark.sql.types import ArrayType, BooleanType, FloatType, NumericType

    for c in features:
        if c not in df.columns:
            raise ValueError(f"no column {c!r} in the DataFrame (it has {', '.join(df.columns)})")
        t = df.schema[c].dataType
        if not isinstance(t, (NumericType, BooleanType)):
            raise TypeError(f"column {c!r} is {t.simpleString()}, not numeric: cast it, or leave it out of the features")
    udf = predict_batch_udf(make_predict_fn(bundle, key, features, output_name, load_log),
                            return_type=ArrayType(FloatType()), batch_size=batch_size,
                            input_tensor_shapes=[[len(features)]])
    return df.withColumn("prediction", udf(array(*[col(c).cast("float") for c in features])))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--input", required=True, help="a CSV without a header")
    ap.add_argument("--output", required=True)
    ap.add_argument("--features", help="comma-separated column names (default: every column, _c0…)")
    ap.add_argument("--output-name", default="probabilities")
    ap.add_argument("--master", default=None)
    ap.add_argument("--load-log", default=None, help="append each worker's pid when it opens the bundle")
    a = ap.parse_args()
    # local mode: the workers run this interpreter (its numpy and neorun);
    # on a cluster, spark.pyspark.python names the executors' own
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    b = SparkSession.builder.appName("neorun-score")
    if a.master:
        b = b.master(a.master)
    spark = b.getOrCreate()
    for f in (a.bundle, a.key):
        if os.path.exists(f):
            spark.sparkContext.addFile(os.path.abspath(f))
    df = spark.read.csv(a.input, inferSchema=True)
    features = a.features.split(",") if a.features else df.columns
    out = score(spark, df, a.bundle, a.key, features, a.output_name, load_log=a.load_log)
    from pyspark.sql.functions import array_join, col
    out.withColumn("prediction", array_join(col("prediction").cast("array<string>"), ";")) \
        .write.mode("overwrite").csv(a.output)
    spark.stop()


if __name__ == "__main__":
    main()
