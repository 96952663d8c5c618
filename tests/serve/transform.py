"""Drives neorun's batch transform jobs with stock boto3, as a team's
scripts would: the `sagemaker` client with `endpoint_url` at neorun (SigV4
with neorun's access key), and an `s3` client of the S3-compatible store
(moto's server) that neorun reads from and writes to.

    transform.py MODE BASE_URL WORKDIR S3_ENDPOINT

Modes:
  run     the model, a job with DataProcessing (ID column dropped, joined
          back), the stock waiter, describe, list, bad requests, a job
          stopped with StopTransformJob
  start   starts the long job `big` (for the kill -9 test)
  wait    waits for `big` with the stock waiter and reads its outputs

Prints one JSON document for the Rust test to check.
"""
import json
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

KEY_ID, SECRET = "AKIDNEORUNTEST", "neorun/test+secret"
mode, base, work, s3_endpoint = sys.argv[1:5]
sm = boto3.client(
    "sagemaker",
    endpoint_url=base,
    region_name="us-east-1",
    aws_access_key_id=KEY_ID,
    aws_secret_access_key=SECRET,
    config=Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5),
)
s3 = boto3.client(
    "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
)
RESOURCES = {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}


def error(fn):
    try:
        fn()
    except ClientError as e:
        return [e.response["Error"]["Code"], e.response["Error"]["Message"]]
    return None


def job(name, uri, out, **kw):
    ti = {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}, "ContentType": "text/csv",
          "SplitType": "Line"}
    ti.update(kw.pop("ti", {}))
    return sm.create_transform_job(TransformJobName=name, ModelName="xgb", TransformInput=ti,
                                   TransformOutput={"S3OutputPath": out, "Accept": "text/csv", "AssembleWith": "Line"},
                                   TransformResources=RESOURCES, **kw)


def wait(name):
    w = sm.get_waiter("transform_job_completed_or_stopped")
    try:
        w.wait(TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    except WaiterError as e:
        pass  # a Failed job ends the waiter with an error; describe says why
    return sm.describe_transform_job(TransformJobName=name)


def body(bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def clean(d):
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in d.items() if k != "ResponseMetadata"}


out = {}
if mode == "run":
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    arn = job("score", "s3://inputs/ids/", "s3://outputs/scored/",
              DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"},
              MaxConcurrentTransforms=2, MaxPayloadInMB=1, BatchStrategy="MultiRecord")["TransformJobArn"]
    out["arn"] = arn
    out["describe"] = clean(wait("score"))
    out["output"] = body("outputs", "scored/ids.csv.out")
    out["list"] = [clean(j) for j in sm.list_transform_jobs(StatusEquals="Completed")["TransformJobSummaries"]]
    # bad requests: refused at once, by name
    out["same_name"] = error(lambda: job("score", "s3://inputs/ids/", "s3://outputs/x/"))
    out["no_model"] = error(lambda: sm.create_transform_job(
        TransformJobName="nomodel", ModelName="nope",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://inputs/ids/"}}},
        TransformOutput={"S3OutputPath": "s3://outputs/y/"}, TransformResources=RESOURCES))
    out["bad_split"] = error(lambda: job("badsplit", "s3://inputs/ids/", "s3://outputs/z/", ti={"SplitType": "RecordIO"}))
    out["bad_filter"] = error(lambda: job("badfilter", "s3://inputs/ids/", "s3://outputs/z/",
                                          DataProcessing={"InputFilter": "$[1"}))
    out["relative"] = error(lambda: job("relative", "data/", "s3://outputs/z/"))
    out["describe_missing"] = error(lambda: sm.describe_transform_job(TransformJobName="nope"))
    # failures found while running: the job is Failed and says why
    job("nobucket", "s3://no-such-bucket/x/", "s3://outputs/nb/")
    out["nobucket"] = clean(wait("nobucket"))
    job("malformed", "s3://inputs/bad/", "s3://outputs/bad/")
    out["malformed"] = clean(wait("malformed"))
    out["malformed_outputs"] = s3.list_objects_v2(Bucket="outputs", Prefix="bad/x.csv.out").get("KeyCount", 0)
    # StopTransformJob on a long job
    job("stopme", "s3://inputs/big/", "s3://outputs/stopped/", MaxConcurrentTransforms=1)
    time.sleep(0.2)
    sm.stop_transform_job(TransformJobName="stopme")
    out["stopped"] = clean(wait("stopme"))
    out["paginated"] = [j["TransformJobName"] for page in sm.get_paginator("list_transform_jobs").paginate(
        PaginationConfig={"PageSize": 1}) for j in page["TransformJobSummaries"]]
    out["stop_completed"] = error(lambda: sm.stop_transform_job(TransformJobName="score"))
elif mode == "start":
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    job("big", "s3://inputs/big/", "s3://outputs/big/", MaxConcurrentTransforms=1)
    out["started"] = True
elif mode == "wait":
    out["describe"] = clean(wait("big"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="outputs", Prefix="big/").get("Contents", [])]
    out["keys"] = keys
    out["outputs"] = {k: body("outputs", k) for k in keys if k.endswith(".out")}
print(json.dumps(out, default=str))
