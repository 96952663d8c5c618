"""Drives neorun's asynchronous inference with stock boto3: the
`sagemaker` client makes an endpoint with an AsyncInferenceConfig, the
`sagemaker-runtime` client calls invoke_endpoint_async, and an `s3` client
of the S3-compatible store (moto's server) holds inputs and outputs.

    async_inference.py MODE BASE_URL WORKDIR S3_ENDPOINT [ARGS]

Modes:
  setup [notify]   model, endpoint configuration, endpoint (waits InService);
                   with `notify`, SNS topics `done` and `failed` announce to
                   the SQS queue `notes`
  notes N          the messages in `notes`, once N distinct requests are there
  auth-setup       an IAM user with a key, then moto checks every signature
  notify           SNS (signature checked) and webhook notifications, a
                   webhook that fails once, one that always refuses
  submit N         uploads N inputs and invokes each; prints their locations
  collect FILE     waits for every output of `submit` (FILE: its JSON)
  bad              requests refused at once, and one that fails later
  timeout PATH     that input with InvocationTimeoutSeconds 1; its failure object
  big PATH         one local input (under --async-input-dir); waits for it

Prints one JSON document for the Rust test to check.
"""
import http.server
import json
import os
import sys
import threading
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
# the store's keys: moto's "testing", or (once it checks signatures) the
# IAM user's that auth-setup made
store_kw = dict(endpoint_url=s3_endpoint, region_name="us-east-1",
                aws_access_key_id=os.environ.get("STORE_KEY_ID", "testing"),
                aws_secret_access_key=os.environ.get("STORE_SECRET", "testing"))
s3, sns, sqs = (boto3.client(c, **store_kw) for c in ("s3", "sns", "sqs"))


def topics_to_queue():
    """SNS topics `done` and `failed`, both delivered raw to SQS queue `notes`."""
    q = sqs.create_queue(QueueName="notes")["QueueUrl"]
    q_arn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    arns = {}
    for name in ("done", "failed"):
        arns[name] = sns.create_topic(Name=name)["TopicArn"]
        sns.subscribe(TopicArn=arns[name], Protocol="sqs", Endpoint=q_arn, Attributes={"RawMessageDelivery": "true"})
    return q, arns


def drain(q, want, seconds=120):
    """Messages of `notes` until `want` distinct inference ids (or time)."""
    notes, ids, t0 = [], set(), time.time()
    while len(ids) < want and time.time() - t0 < seconds:
        r = sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in r.get("Messages", []):
            body = json.loads(m["Body"])
            notes.append(body)
            ids.add(body.get("inferenceId"))
            sqs.delete_message(QueueUrl=q, ReceiptHandle=m["ReceiptHandle"])
    return notes


class Hook(http.server.BaseHTTPRequestHandler):
    """A webhook: /flaky answers 500 to its first POST, /gone always 404."""
    got, tries = [], {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = Hook.tries[self.path] = Hook.tries.get(self.path, 0) + 1
        code = 404 if self.path == "/gone" else (500 if n == 1 else 200)
        if code == 200:
            Hook.got.append({"path": self.path, "attempt": n, "type": self.headers["Content-Type"],
                             "message": json.loads(body)})
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


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
    output = {"S3OutputPath": "s3://outputs/async/", "S3FailurePath": "s3://outputs/async-failures/"}
    if sys.argv[5:] == ["notify"]:
        _, arns = topics_to_queue()
        output["NotificationConfig"] = {"SuccessTopic": arns["done"], "ErrorTopic": arns["failed"]}
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    sm.create_endpoint_config(EndpointConfigName="async-cfg", ProductionVariants=[
        {"VariantName": "main", "ModelName": "xgb", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": output,
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
elif mode == "notes":
    q = sqs.get_queue_url(QueueName="notes")["QueueUrl"]
    out["notes"] = drain(q, int(sys.argv[5]))
elif mode == "auth-setup":
    iam = boto3.client("iam", **store_kw)
    iam.create_user(UserName="neorun")
    iam.put_user_policy(UserName="neorun", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="neorun")["AccessKey"]
    for b in ("inputs", "outputs"):
        s3.create_bucket(Bucket=b)
    # from here on moto checks every request's SigV4 signature (botocore's
    # own computation) against the IAM user's secret
    urllib.request.urlopen(urllib.request.Request(s3_endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"}))
    wrong = boto3.client("sns", **{**store_kw, "aws_access_key_id": key["AccessKeyId"],
                                   "aws_secret_access_key": "not-the-secret"})
    out["wrong_secret"] = error(lambda: wrong.list_topics())
    out["key_id"], out["secret"] = key["AccessKeyId"], key["SecretAccessKey"]
elif mode == "notify":
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{srv.server_address[1]}"
    q, arns = topics_to_queue()
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    variants = [{"VariantName": "main", "ModelName": "xgb"}]
    base_out = {"S3OutputPath": "s3://outputs/async/"}
    # refused by name: a topic that is neither an SNS ARN nor a URL, an unknown
    # IncludeInferenceResponseIn
    out["bad_topic"] = error(lambda: sm.create_endpoint_config(
        EndpointConfigName="bad1", ProductionVariants=variants, AsyncInferenceConfig={"OutputConfig": {
            **base_out, "NotificationConfig": {"SuccessTopic": "done"}}}))
    out["bad_include"] = error(lambda: sm.create_endpoint_config(
        EndpointConfigName="bad2", ProductionVariants=variants, AsyncInferenceConfig={"OutputConfig": {
            **base_out, "NotificationConfig": {"SuccessTopic": arns["done"],
                                               "IncludeInferenceResponseIn": ["EVERYWHERE"]}}}))
    for name, topics in (("hooked", {"SuccessTopic": arns["done"], "ErrorTopic": hook + "/flaky",
                                     "IncludeInferenceResponseIn": ["SUCCESS_NOTIFICATION_TOPIC"]}),
                         ("refused", {"ErrorTopic": hook + "/gone"})):
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants,
                                  AsyncInferenceConfig={"OutputConfig": {**base_out, "NotificationConfig": topics}})
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    s3.put_object(Bucket="inputs", Key="n/good.csv", Body="".join(r + "\n" for r in rows[:3]).encode())
    s3.put_object(Bucket="inputs", Key="n/bad.csv", Body=(rows[0] + "\n1,2,3\n").encode())
    good = rt.invoke_endpoint_async(EndpointName="hooked", InputLocation="s3://inputs/n/good.csv",
                                    InferenceId="good-1", CustomAttributes="trace=7")
    bad = rt.invoke_endpoint_async(EndpointName="hooked", InputLocation="s3://inputs/n/bad.csv",
                                   ContentType="text/csv", InferenceId="bad-1")
    rt.invoke_endpoint_async(EndpointName="refused", InputLocation="s3://inputs/n/bad.csv", InferenceId="bad-2")
    # no ContentType: the format is the input's name's (JSON Lines here)
    s3.put_object(Bucket="inputs", Key="n/rows.jsonl", Body="".join(f"[{r}]\n" for r in rows[:2]).encode())
    jl = rt.invoke_endpoint_async(EndpointName="refused", InputLocation="s3://inputs/n/rows.jsonl")
    out["jsonl"] = wait_for(jl["OutputLocation"])
    out["good"], out["bad"] = good, {k: bad[k] for k in ("OutputLocation", "FailureLocation")}
    out["sns"] = drain(q, 1, 60)
    out["output"] = wait_for(good["OutputLocation"])
    t0 = time.time()
    while not Hook.got and time.time() - t0 < 60:
        time.sleep(0.1)
    out["hook"], out["tries"] = Hook.got, Hook.tries
    time.sleep(5)  # /gone: refused at 0, 1 and 3 s, then abandoned
    out["tries_after"] = Hook.tries
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
