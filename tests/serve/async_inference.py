"""Drives neorun's asynchronous inference with stock boto3: the
`sagemaker` client makes an endpoint with an AsyncInferenceConfig, the
`sagemaker-runtime` client calls invoke_endpoint_async, and an `s3` client
of the S3-compatible store (moto's server) holds inputs and outputs.

    async_inference.py MODE BASE_URL WORKDIR S3_ENDPOINT [ARGS]

Modes:
  setup            model, endpoint configuration, endpoint (waits InService)
  submit N         uploads N inputs and invokes each; prints their locations
  collect FILE     waits for every output of `submit` (FILE: its JSON)
  bad              requests refused at once, and one that fails later
  timeout PATH     that input with InvocationTimeoutSeconds 1; its failure object
  big PATH         one local input (under --async-input-dir); waits for it

Prints one JSON document for the Rust test to check.
"""
import json
import sys
import time
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

KEY_ID, SECRET = "AKIDNEORUNTEST", "neorun/test+secret"
mode, base, work, s3_endpoint = sys.argv[1:5]
kw = dict(endpoint_url=base, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
          config=Config(retries={"total_max_attempts": 1}, read_timeout=60, connect_timeout=5))
sm, rt = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing")


def error(fn):
    try:
        fn()
    except ClientError as e:
        return [e.response["Error"]["Code"], e.response["Error"]["Message"]]
    return None


def read(uri):
    bucket, key = uri[len("s3://"):].split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def wait_for(uri, seconds=120):
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            return read(uri)
        except ClientError:
            time.sleep(0.1)
    return None


rows = open(work + "/sample.csv").read().splitlines()
out = {}
if mode == "setup":
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    sm.create_endpoint_config(EndpointConfigName="async-cfg", ProductionVariants=[
        {"VariantName": "main", "ModelName": "xgb", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://outputs/async/",
                                               "S3FailurePath": "s3://outputs/async-failures/"},
                              "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2}})
    sm.create_endpoint(EndpointName="scorer", EndpointConfigName="async-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="scorer", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    out["ok"] = True
elif mode == "submit":
    n = int(sys.argv[5])
    jobs = []
    for i in range(n):
        body = "".join(rows[(i + k) % len(rows)] + "\n" for k in range(5))
        s3.put_object(Bucket="inputs", Key=f"async/{i}.csv", Body=body.encode())
        r = rt.invoke_endpoint_async(EndpointName="scorer", InputLocation=f"s3://inputs/async/{i}.csv",
                                     ContentType="text/csv", InferenceId=f"req-{i}")
        jobs.append({"i": i, "InferenceId": r["InferenceId"], "OutputLocation": r["OutputLocation"],
                     "FailureLocation": r["FailureLocation"]})
    out["jobs"] = jobs
elif mode == "collect":
    jobs = json.load(open(sys.argv[5]))["jobs"]
    out["outputs"] = {j["InferenceId"]: wait_for(j["OutputLocation"]) for j in jobs}
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="outputs", Prefix="async/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    out["keys"] = keys
elif mode == "bad":
    out["missing"] = error(lambda: rt.invoke_endpoint_async(EndpointName="scorer",
                                                             InputLocation="s3://inputs/async/nope.csv"))
    out["no_bucket"] = error(lambda: rt.invoke_endpoint_async(EndpointName="scorer",
                                                               InputLocation="s3://no-such-bucket/x.csv"))
    out["outside"] = error(lambda: rt.invoke_endpoint_async(EndpointName="scorer", InputLocation="/etc/passwd"))
    out["no_endpoint"] = error(lambda: rt.invoke_endpoint_async(EndpointName="nope",
                                                                 InputLocation="s3://inputs/async/0.csv"))
    # below SageMaker's minimum TTL: botocore refuses it itself, so sent raw
    req = urllib.request.Request(base + "/endpoints/scorer/async-invocations", data=b"", method="POST", headers={
        "X-Amzn-SageMaker-InputLocation": "s3://inputs/async/0.csv", "X-Amzn-SageMaker-RequestTTLSeconds": "30"})
    try:
        urllib.request.urlopen(req)
        out["ttl"] = None
    except urllib.error.HTTPError as e:
        out["ttl"] = [e.code, e.read().decode()]
    # accepted, then fails while running: the failure object says why
    s3.put_object(Bucket="inputs", Key="async/bad.csv", Body=(rows[0] + "\n1,2,3\n").encode())
    r = rt.invoke_endpoint_async(EndpointName="scorer", InputLocation="s3://inputs/async/bad.csv",
                                 ContentType="text/csv")
    out["failure"] = wait_for(r["FailureLocation"])
    out["failure_location"] = r["FailureLocation"]
    # a failure that cannot be written (its bucket is gone) is not dropped:
    # the request stays queued, retried with a backoff
    sm.create_endpoint_config(EndpointConfigName="nofail-cfg", ProductionVariants=[
        {"VariantName": "main", "ModelName": "xgb"}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://outputs/async2/",
                                               "S3FailurePath": "s3://no-such-bucket/failures/"}})
    sm.create_endpoint(EndpointName="nofail", EndpointConfigName="nofail-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="nofail", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    rt.invoke_endpoint_async(EndpointName="nofail", InputLocation="s3://inputs/async/bad.csv", ContentType="text/csv",
                             InferenceId="unrecordable")
    time.sleep(4)
elif mode == "timeout":
    # the 1 GB input with one second to run: a failure object says why
    r = rt.invoke_endpoint_async(EndpointName="scorer", InputLocation=sys.argv[5], ContentType="text/csv",
                                 InvocationTimeoutSeconds=1)
    out["failure"] = wait_for(r["FailureLocation"], 60)
    out["output_exists"] = s3.list_objects_v2(Bucket="outputs", Prefix="async/" + r["OutputLocation"].rsplit("/", 1)[1]).get("KeyCount", 0)
elif mode == "big":
    t0 = time.time()
    r = rt.invoke_endpoint_async(EndpointName="scorer", InputLocation=sys.argv[5], ContentType="text/csv",
                                 InvocationTimeoutSeconds=3600)
    bucket, key = r["OutputLocation"][len("s3://"):].split("/", 1)
    while time.time() - t0 < 600:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            out["size"] = head["ContentLength"]
            break
        except ClientError:
            time.sleep(0.2)
    out["seconds"] = time.time() - t0
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    out["lines"] = sum(chunk.count(b"\n") for chunk in iter(lambda: body.read(1 << 20), b""))
print(json.dumps(out))
