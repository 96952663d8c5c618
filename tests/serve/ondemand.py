"""Serverless and multi-model endpoints on neorun, driven by stock boto3.

    ondemand.py MODE BASE_URL WORKDIR

Modes:
  serverless   a ServerlessConfig variant: cold start, warm, idle unload
               (the server runs with --serverless-idle-seconds 1), cold
               again, and ThrottlingException beyond MaxConcurrency
  multi        a Mode MultiModel model over WORKDIR/mme: each bundle by
               TargetModel, evictions over the memory budget, bad targets

Prints one JSON document for the Rust test to check.
"""
import json
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

KEY_ID, SECRET = "AKIDNEORUNTEST", "neorun/test+secret"
mode, base, work = sys.argv[1:4]
kw = dict(endpoint_url=base, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
          config=Config(retries={"total_max_attempts": 1}, read_timeout=60, connect_timeout=5,
                        max_pool_connections=20))
sm, rt = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
row = open(work + "/sample.csv").read().splitlines()[0] + "\n"


def call(ep, **extra):
    r = rt.invoke_endpoint(EndpointName=ep, ContentType="text/csv", Accept="text/csv", Body=row, **extra)
    h = r["ResponseMetadata"]["HTTPHeaders"]
    return {"body": r["Body"].read().decode(), "cold": h.get("x-neorun-cold-start-ms"),
            "evicted": h.get("x-neorun-evicted-models")}


def error(fn):
    try:
        fn()
    except ClientError as e:
        return [e.response["Error"]["Code"], e.response["Error"]["Message"],
                e.response["ResponseMetadata"]["HTTPStatusCode"]]
    return None


def endpoint(name, model, variant):
    sm.create_endpoint_config(EndpointConfigName=name + "-cfg", ProductionVariants=[dict(variant, ModelName=model)])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name + "-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


out = {}
if mode == "serverless":
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    endpoint("sl", "xgb", {"VariantName": "sl", "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1}})
    out["first"] = call("sl")
    out["warm"] = call("sl")
    time.sleep(3)  # over the idle period: unloaded
    out["after_idle"] = call("sl")
    # beyond MaxConcurrency (1): requests that arrive while another (a cold start) holds the place
    throttled = []
    for attempt in range(5):
        time.sleep(3)
        results = []
        def one():
            try:
                call("sl")
                results.append("ok")
            except ClientError as e:
                results.append([e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"],
                                e.response["Error"]["Message"]])
        ts = [threading.Thread(target=one) for _ in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        throttled = [r for r in results if r != "ok"]
        if throttled:
            break
    out["throttled"] = throttled
    out["bad_memory"] = error(lambda: sm.create_endpoint_config(EndpointConfigName="bad", ProductionVariants=[
        {"VariantName": "v", "ModelName": "xgb", "ServerlessConfig": {"MemorySizeInMB": 1536, "MaxConcurrency": 2}}]))
elif mode == "multi":
    sm.create_model(ModelName="mm", PrimaryContainer={"ModelDataUrl": work + "/mme", "Mode": "MultiModel"})
    endpoint("multi", "mm", {"VariantName": "all", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1})
    out["calls"] = [dict(call("multi", TargetModel=t), target=t)
                    for t in ["a.neo", "b.neo", "a.neo", "c.neo", "mlp.neo", "b.neo"]]
    out["no_target"] = error(lambda: call("multi"))
    out["escape"] = error(lambda: call("multi", TargetModel="../xgb.neo"))
    out["missing"] = error(lambda: call("multi", TargetModel="nope.neo"))
    out["not_a_dir"] = error(lambda: sm.create_model(ModelName="mm2", PrimaryContainer={
        "ModelDataUrl": work + "/xgb.neo", "Mode": "MultiModel"}))
print(json.dumps(out))
