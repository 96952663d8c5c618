"""Drives neorun's control plane and endpoints with stock boto3, as a
team's scripts would: `sagemaker` and `sagemaker-runtime` clients with
`endpoint_url` pointed at neorun, signed with SigV4 by botocore.

    endpoints.py MODE BASE_URL WORKDIR

WORKDIR holds xgb.neo and mlp.neo (and, for `bad`, the bad bundles).
Prints one JSON document: what happened, for the Rust test to check.
Retries are off so that a refused or failed request is seen, not retried.
"""
import json
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

KEY_ID, SECRET = "AKIDNEORUNTEST", "neorun/test+secret"


def clients(base, secret=SECRET, key_id=KEY_ID):
    kw = dict(
        endpoint_url=base,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5),
    )
    return boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)


def row():
    return open(sys.argv[3] + "/row.csv").read()


def error(fn):
    """(code, message, http status) of a call expected to fail."""
    try:
        fn()
    except ClientError as e:
        return {"code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
    return None


def variants(d):
    return {v["VariantName"]: [v["CurrentWeight"], v["DesiredWeight"]] for v in d["ProductionVariants"]}


def create(sm, work, weights=(3, 1), sampling=100, name="ep"):
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/sagemaker")
    sm.create_model(ModelName="mlp", PrimaryContainer={"ModelDataUrl": "file://" + work + "/mlp.neo"})
    sm.create_endpoint_config(
        EndpointConfigName="cfg",
        ProductionVariants=[
            {"VariantName": "A", "ModelName": "xgb", "InitialVariantWeight": weights[0],
             "InstanceType": "ml.m5.large", "InitialInstanceCount": 1},
            {"VariantName": "B", "ModelName": "mlp", "InitialVariantWeight": weights[1],
             "InstanceType": "ml.m5.large", "InitialInstanceCount": 1},
        ],
        DataCaptureConfig={
            "EnableCapture": True, "InitialSamplingPercentage": sampling,
            "DestinationS3Uri": "file://" + work + "/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
        },
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName="cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def flow(base, work):
    sm, rt = clients(base)
    create(sm, work)
    out = {"describe_before": sm.describe_endpoint(EndpointName="ep")}
    body = row()
    answered = {"A": 0, "B": 0}
    ids = {"A": [], "B": []}
    attrs = {"A": 0, "B": 0}
    split = {"A": 0, "B": 0}

    def invoke(client, n, **kw):
        extra = {}
        if n % 2 == 0:
            extra["InferenceId"] = f"req-{n}"
        if n % 3 == 0:
            extra["CustomAttributes"] = f"trace={n}"
        r = client.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Accept="application/json",
                                   Body=body, **extra, **kw)
        v = r["InvokedProductionVariant"]
        answered[v] += 1
        if "InferenceId" in extra:
            ids[v].append(extra["InferenceId"])
        if "CustomAttributes" in extra:
            attrs[v] += 1
            assert r.get("CustomAttributes") == extra["CustomAttributes"], r.get("CustomAttributes")
        json.loads(r["Body"].read())
        return v

    n = 0
    for _ in range(4000):
        split[invoke(rt, n)] += 1
        n += 1
    out["split"] = split
    pinned = {"A": [], "B": []}
    for target in ["A", "B"] * 50:
        pinned[target].append(invoke(rt, n, TargetVariant=target))
        n += 1
    out["pinned"] = pinned

    # weights to 0:1 while four clients keep invoking
    stop = threading.Event()
    lock = threading.Lock()
    load = {"ok": 0, "failed": [], "after": {"A": 0, "B": 0}}
    updated = threading.Event()
    counter = [n]

    def worker():
        _, c = clients(base)
        while not stop.is_set():
            with lock:
                k = counter[0]
                counter[0] += 1
            after = updated.is_set()
            try:
                v = invoke(c, k)
                with lock:
                    load["ok"] += 1
                    if after:
                        load["after"][v] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    load["failed"].append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    sm.update_endpoint_weights_and_capacities(
        EndpointName="ep", DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 0.0},
                                                       {"VariantName": "B", "DesiredWeight": 1.0}])
    updated.set()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    out["load"] = load
    out["describe_after"] = sm.describe_endpoint(EndpointName="ep")
    out["answered"] = answered
    out["ids"] = ids
    out["attrs"] = attrs
    return out


def sampled(base, work):
    """An endpoint at 25% capture; counts what was answered."""
    sm, rt = clients(base)
    create(sm, work, weights=(1, 1), sampling=25)
    body = row()
    answered = {"A": 0, "B": 0}
    for _ in range(2000):
        r = rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=body)
        answered[r["InvokedProductionVariant"]] += 1
    return {"answered": answered}


def setup(base, work):
    """Creates the endpoint and moves its weights (for the restart test)."""
    sm, _ = clients(base)
    create(sm, work)
    sm.update_endpoint_weights_and_capacities(
        EndpointName="ep", DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 1.0},
                                                       {"VariantName": "B", "DesiredWeight": 4.0}])
    return state(base, work)


def state(base, work):
    sm, rt = clients(base)
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    d = sm.describe_endpoint(EndpointName="ep")
    r = rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=row(), TargetVariant="B")
    return {
        "status": d["EndpointStatus"],
        "config": d["EndpointConfigName"],
        "weights": variants(d),
        "capture": d["DataCaptureConfig"],
        "models": sorted(m["ModelName"] for m in sm.list_models()["Models"]),
        "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]],
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
        "invoked": r["InvokedProductionVariant"],
        "model_url": sm.describe_model(ModelName="mlp")["PrimaryContainer"]["ModelDataUrl"],
    }


def bad(base, work):
    """Each bad request, with the error it got."""
    sm, rt = clients(base)
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    good = [{"VariantName": "A", "ModelName": "xgb", "InitialVariantWeight": 1.0}]

    def config(**kw):
        args = dict(EndpointConfigName="c1", ProductionVariants=good)
        args.update(kw)
        return lambda: sm.create_endpoint_config(**args)

    out = {}
    for name, url in [("missing", work + "/nope.neo"), ("unsigned", work + "/unsigned.neo"),
                      ("other_target", work + "/arm.neo"), ("s3", "s3://bucket/model.tar.gz")]:
        out["model_" + name] = error(lambda: sm.create_model(ModelName="m-" + name.replace("_", "-"),
                                                             PrimaryContainer={"ModelDataUrl": url}))
    out["model_exists"] = error(lambda: sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"}))
    # botocore validates shapes client-side (unknown members): send the raw
    # JSON through the client's own signer instead
    out["config_unknown_field"] = raw(base, "CreateEndpointConfig", {
        "EndpointConfigName": "c1",
        "ProductionVariants": [{"VariantName": "A", "ModelName": "xgb", "InitialVariantWeigth": 1.0}]})
    out["config_zero_weights"] = error(config(ProductionVariants=[
        {"VariantName": "A", "ModelName": "xgb", "InitialVariantWeight": 0.0},
        {"VariantName": "B", "ModelName": "xgb", "InitialVariantWeight": 0.0}]))
    out["config_duplicate_variants"] = error(config(ProductionVariants=good + good))
    out["config_unknown_model"] = error(config(ProductionVariants=[{"VariantName": "A", "ModelName": "ghost"}]))
    out["config_shadow_over_100"] = error(config(ShadowProductionVariants=[
        {"VariantName": "S", "ModelName": "xgb", "InitialVariantWeight": 1.5}]))
    out["config_capture_unwritable"] = error(config(DataCaptureConfig={
        "InitialSamplingPercentage": 100, "DestinationS3Uri": "file:///proc/neorun-capture",
        "CaptureOptions": [{"CaptureMode": "Input"}]}))
    out["config_capture_s3"] = error(config(DataCaptureConfig={
        "InitialSamplingPercentage": 100, "DestinationS3Uri": "s3://bucket/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}]}))
    sm.create_endpoint_config(EndpointConfigName="c1", ProductionVariants=good)
    out["endpoint_unknown_config"] = error(lambda: sm.create_endpoint(EndpointName="e1", EndpointConfigName="ghost"))
    sm.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="e1", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    out["endpoint_exists"] = error(lambda: sm.create_endpoint(EndpointName="e1", EndpointConfigName="c1"))
    out["delete_missing_endpoint"] = error(lambda: sm.delete_endpoint(EndpointName="ghost"))
    out["describe_missing_endpoint"] = error(lambda: sm.describe_endpoint(EndpointName="ghost"))
    out["update_unknown_variant"] = error(lambda: sm.update_endpoint_weights_and_capacities(
        EndpointName="e1", DesiredWeightsAndCapacities=[{"VariantName": "Z", "DesiredWeight": 1.0}]))
    out["update_zero_weights"] = error(lambda: sm.update_endpoint_weights_and_capacities(
        EndpointName="e1", DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 0.0}]))
    out["invoke_unknown_variant"] = error(lambda: rt.invoke_endpoint(
        EndpointName="e1", ContentType="text/csv", Body=row(), TargetVariant="Z"))
    out["invoke_unknown_endpoint"] = error(lambda: rt.invoke_endpoint(
        EndpointName="ghost", ContentType="text/csv", Body=row()))
    out["after"] = variants(sm.describe_endpoint(EndpointName="e1"))
    # authentication
    wrong, _ = clients(base, secret="not-the-secret")
    out["wrong_secret"] = error(lambda: wrong.list_endpoints())
    unknown, _ = clients(base, key_id="AKIDSOMEONEELSE")
    out["unknown_key"] = error(lambda: unknown.list_endpoints())
    import botocore.auth
    real = botocore.auth.get_current_datetime
    import datetime
    botocore.auth.get_current_datetime = lambda *a, **k: real(*a, **k) - datetime.timedelta(hours=1)
    try:
        out["expired_date"] = error(lambda: sm.list_endpoints())
    finally:
        botocore.auth.get_current_datetime = real
    out["models"] = sorted(m["ModelName"] for m in sm.list_models()["Models"])
    out["configs"] = sorted(c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"])
    return out


def promote(base, work):
    """A shadow promoted to production, then removed, with UpdateEndpoint."""
    sm, rt = clients(base)
    sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": work + "/xgb.neo"})
    sm.create_model(ModelName="mlp", PrimaryContainer={"ModelDataUrl": work + "/mlp.neo"})
    sm.create_endpoint_config(EndpointConfigName="with-shadow",
                              ProductionVariants=[{"VariantName": "A", "ModelName": "xgb"}],
                              ShadowProductionVariants=[{"VariantName": "S", "ModelName": "mlp", "InitialVariantWeight": 0.5}])
    sm.create_endpoint_config(EndpointConfigName="promoted",
                              ProductionVariants=[{"VariantName": "S", "ModelName": "mlp"}])
    sm.create_endpoint(EndpointName="ep", EndpointConfigName="with-shadow")
    wait = lambda: sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    wait()
    out = {"before": sm.describe_endpoint(EndpointName="ep")}
    body = row()
    out["answered_before"] = sorted({rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=body)["InvokedProductionVariant"] for _ in range(20)})
    sm.update_endpoint(EndpointName="ep", EndpointConfigName="promoted")
    wait()
    out["after"] = sm.describe_endpoint(EndpointName="ep")
    out["answered_after"] = sorted({rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=body)["InvokedProductionVariant"] for _ in range(20)})
    out["update_missing_config"] = error(lambda: sm.update_endpoint(EndpointName="ep", EndpointConfigName="ghost"))
    # deleting what the endpoint was made from does not change it (as on SageMaker)
    sm.delete_endpoint_config(EndpointConfigName="promoted")
    sm.delete_model(ModelName="mlp")
    out["deleted_model"] = error(lambda: sm.describe_model(ModelName="mlp"))
    out["deleted_config"] = error(lambda: sm.describe_endpoint_config(EndpointConfigName="promoted"))
    out["delete_again"] = error(lambda: sm.delete_model(ModelName="mlp"))
    out["still_answers"] = rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=body)["InvokedProductionVariant"]
    out["models_left"] = [m["ModelName"] for m in sm.list_models()["Models"]]
    return out


def status(base, work):
    """DescribeEndpoint as it is now (no waiting), and an invocation's error."""
    sm, rt = clients(base)
    for _ in range(100):
        d = sm.describe_endpoint(EndpointName="ep")
        if d["EndpointStatus"] != "Creating":
            break
        time.sleep(0.1)
    return {"status": d["EndpointStatus"], "reason": d.get("FailureReason"),
            "invoke": error(lambda: rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=row()))}


def oci(base, work):
    """Models pulled from an OCI registry by the control plane."""
    refs = json.load(open(work + "/oci.json"))
    sm, rt = clients(base)
    out = {"created": sm.create_model(ModelName="xgb", PrimaryContainer={"ModelDataUrl": refs["index"]})["ModelArn"]}
    sm.create_endpoint_config(EndpointConfigName="cfg", ProductionVariants=[{"VariantName": "A", "ModelName": "xgb"}])
    sm.create_endpoint(EndpointName="ep", EndpointConfigName="cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    r = rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=row())
    out["body"] = json.loads(r["Body"].read())
    out["url"] = sm.describe_model(ModelName="xgb")["PrimaryContainer"]["ModelDataUrl"]
    out["resolved"] = sm.describe_endpoint(EndpointName="ep")["ProductionVariants"][0]["DeployedImages"][0]["ResolvedImage"]
    out["other_target"] = error(lambda: sm.create_model(ModelName="arm", PrimaryContainer={"ModelDataUrl": refs["other"]}))
    out["missing_tag"] = error(lambda: sm.create_model(ModelName="gone", PrimaryContainer={"ModelDataUrl": refs["missing"]}))
    out["models"] = [m["ModelName"] for m in sm.list_models()["Models"]]
    return out


def invoke(base, work):
    """One signed invocation of endpoint `ep`."""
    _, rt = clients(base)
    r = rt.invoke_endpoint(EndpointName="ep", ContentType="text/csv", Body=row())
    return {"variant": r["InvokedProductionVariant"], "body": json.loads(r["Body"].read())}


def raw(base, op, body):
    """A SageMaker call with a body botocore's validation would stop, signed by botocore."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import urllib.request
    req = AWSRequest(method="POST", url=base + "/", data=json.dumps(body).encode(), headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker." + op})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "us-east-1").add_auth(req)
    r = urllib.request.Request(base + "/", data=req.body, headers=dict(req.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return {"status": resp.status, "body": json.loads(resp.read())}
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read())
        return {"status": e.code, "code": e.headers.get("x-amzn-ErrorType"), "message": doc.get("message")}


if __name__ == "__main__":
    mode, base, work = sys.argv[1], sys.argv[2], sys.argv[3]
    result = {"flow": flow, "sampled": sampled, "setup": setup, "state": state, "bad": bad,
              "promote": promote, "invoke": invoke, "status": status, "oci": oci}[mode](base, work)
    print(json.dumps(result, default=str))
