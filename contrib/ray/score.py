"""Scores a Ray Dataset with a neoc bundle: Dataset.map_batches with a
callable class, so each actor opens (verifies) the bundle once and then
gets numpy batches.

    python contrib/ray/score.py --bundle fraud-xgb.neo --key team.pub \\
        --input rows.csv --output scored/ [--actors 2] [--load-log FILE]

The bundle and key paths must be readable where the actors run (a shared
file system, or the same machine). The output has the input's columns and
`prediction` (the model output named by --output-name, one array per row),
written as CSV with the array joined by `;`.
"""
import argparse
import os

import numpy as np


class Scorer:
    """One per actor: the bundle is opened in __init__, once."""

    def __init__(self, bundle, key, features, output_name="probabilities", load_log=None):
        import neorun

        self.model = neorun.Model(bundle, trusted_key=key)
        self.features, self.output_name = features, output_name
        if load_log:
            with open(load_log, "a") as f:
                f.write(f"{os.getpid()}\n")

    def __call__(self, batch):
        cols = []
        for name in self.features:
            c = batch[name]
            if c.dtype.kind not in "fiub":
                raise TypeError(f"column {name!r} is {c.dtype}, not numeric: cast it, or leave it out of the features")
            cols.append(c)
        x = np.stack(cols, axis=1).astype(np.float32, copy=False)
        batch["prediction"] = self.model.predict(x)[self.output_name]
        return batch


def score(ds, bundle, key, features, output_name="probabilities", actors=2, batch_size=8192, load_log=None):
    return ds.map_batches(Scorer, fn_constructor_kwargs=dict(bundle=bundle, key=key, features=features,
                                                             output_name=output_name, load_log=load_log),
                          batch_format="numpy", batch_size=batch_size, concurrency=actors)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--input", required=True, help="a CSV without a header")
    ap.add_argument("--output", required=True)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--output-name", default="probabilities")
    ap.add_argument("--load-log", default=None)
    a = ap.parse_args()
    import pyarrow.csv as pacsv
    import ray

    # one CPU per actor and one for reading
    ray.init(num_cpus=a.actors + 1, include_dashboard=False, log_to_driver=False)
    # the output in the input's order
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    first = open(a.input).readline().split(",")
    names = [f"c{i}" for i in range(len(first))]
    ds = ray.data.read_csv(a.input, read_options=pacsv.ReadOptions(column_names=names))
    out = score(ds, os.path.abspath(a.bundle), os.path.abspath(a.key), names, a.output_name, a.actors,
                load_log=a.load_log and os.path.abspath(a.load_log))
    rows = out.take_all()
    os.makedirs(a.output, exist_ok=True)
    with open(os.path.join(a.output, "scored.csv"), "w") as f:
        for r in rows:
            f.write(",".join(repr(float(r[n])) for n in names) + "," + ";".join(repr(float(v)) for v in r["prediction"]) + "\n")
    ray.shutdown()


if __name__ == "__main__":
    main()
