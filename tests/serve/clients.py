#!/usr/bin/env python3
"""Drives a running `neorun serve` with the stock clients: boto3's
sagemaker-runtime invoke_endpoint (CSV and JSON) and tritonclient.http.

Usage: clients.py BASE_URL MODELS_DIR   (prints one JSON document)
"""
import json
import os
import sys

import boto3
import numpy as np
import tritonclient.http as httpclient
from botocore.config import Config


def main():
    base, models = sys.argv[1], sys.argv[2]
    out = {}
    rt = boto3.client("sagemaker-runtime", endpoint_url=base, region_name="us-east-1",
                      aws_access_key_id="dummy", aws_secret_access_key="dummy",
                      config=Config(retries={"max_attempts": 1}))
    csv = open(os.path.join(models, "fraud-xgb", "sample.csv"), "rb").read()
    r = rt.invoke_endpoint(EndpointName="fraud", Body=csv, ContentType="text/csv", Accept="application/json")
    out["boto3_csv"] = json.loads(r["Body"].read())
    out["boto3_variant"] = r.get("InvokedProductionVariant")
    rows = [[float(v) for v in line.split(",")] for line in csv.decode().splitlines()]
    r = rt.invoke_endpoint(EndpointName="fraud", Body=json.dumps({"instances": rows}), ContentType="application/json",
                           TargetModel="fraud-mlp")
    out["boto3_json_mlp"] = json.loads(r["Body"].read())

    host = base.replace("http://", "")
    client = httpclient.InferenceServerClient(url=host)
    out["triton_live"] = client.is_server_live()
    out["triton_ready"] = client.is_model_ready("image-cnn")
    img = np.array(json.load(open(os.path.join(models, "image-cnn", "sample.json")))["inputs"], dtype=np.float32)
    inp = httpclient.InferInput("image", list(img.shape), "FP32")
    inp.set_data_from_numpy(img, binary_data=False)
    res = client.infer("image-cnn", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    out["triton_cnn"] = res.as_numpy("probabilities").reshape(-1).tolist()
    # the binary tensor extension, both ways
    inp = httpclient.InferInput("image", list(img.shape), "FP32")
    inp.set_data_from_numpy(img, binary_data=True)
    res = client.infer("image-cnn", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)])
    out["triton_cnn_binary"] = res.as_numpy("probabilities").reshape(-1).tolist()
    rows_np = np.array(rows, dtype=np.float32)
    inp = httpclient.InferInput("features", list(rows_np.shape), "FP32")
    inp.set_data_from_numpy(rows_np, binary_data=True)
    res = client.infer("fraud-xgb", [inp])
    out["triton_xgb_label"] = res.as_numpy("label").reshape(-1).tolist()
    out["triton_xgb_proba"] = res.as_numpy("probabilities").reshape(-1).tolist()
    meta = client.get_model_metadata("fraud-xgb")
    out["triton_meta_inputs"] = meta["inputs"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
