"""Guarded rollouts on neorun, driven by stock boto3 as a team's runbook
would: `update_endpoint` with a `DeploymentConfig` while clients keep
invoking the endpoint, the `endpoint_in_service` waiter across the update.

    rollouts.py MODE BASE_URL WORKDIR [JSON]

WORKDIR holds add.neo (blue: r = a + b), mod.neo (green: r = a mod b,
which fails on a zero divisor), badtest.neo (a bundle whose own test
vectors fail) and the state directory `state/` (its journal is read back).
Prints one JSON document for the Rust test to check. Retries are off.
"""
import datetime
import json
import os
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from endpoints import error  # noqa: E402  (the same helper as the endpoint tests')

KEY_ID, SECRET = "AKIDNEORUNTEST", "neorun/test+secret"
GOOD = json.dumps({"inputs": {"a": [[7, 5]], "b": [[3, 2]]}})
# a zero divisor: blue (add) answers, green (mod) fails inside its engine
ZERO = json.dumps({"inputs": {"a": [[7, 5]], "b": [[0, 2]]}})


def clients(base, validate=True):
    kw = dict(
        endpoint_url=base,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5,
                      max_pool_connections=16, parameter_validation=validate),
    )
    return boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)


def setup(base, work, _arg):
    sm, _ = clients(base)
    for name in ["add", "mod", "badtest"]:
        sm.create_model(ModelName=name, PrimaryContainer={"ModelDataUrl": f"{work}/{name}.neo"})
    for cfg, variant, model in [("v1", "Blue", "add"), ("v2", "Green", "mod"), ("v3", "Broken", "badtest")]:
        sm.create_endpoint_config(EndpointConfigName=cfg, ProductionVariants=[
            {"VariantName": variant, "ModelName": model, "InitialVariantWeight": 1,
             "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="ep", EndpointConfigName="v1")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return {"status": sm.describe_endpoint(EndpointName="ep")["EndpointStatus"]}


def epoch(iso):
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def journal(work, since):
    out = []
    for line in open(work + "/state/journal.jsonl"):
        e = json.loads(line)
        e["t"] = epoch(e["time"])
        if e["t"] >= since - 1:
            out.append(e)
    return out


def rollout(base, work, arg):
    """Clients invoke `ep` all along; `update_endpoint` runs the given
    DeploymentConfig to config `to`. With `zero_share`, that share of
    requests carries a zero divisor, from green's step `zero_from_step`
    (1-based) on."""
    spec = json.loads(arg)
    sm, rt = clients(base)
    stop = threading.Event()
    # green's share of requests as DescribeEndpoint reports it
    share_now = {"share": 0.0}
    requests = []
    lock = threading.Lock()

    def client(k):
        _, rt_k = clients(base)
        n = 0
        while not stop.is_set():
            n += 1
            zero = (spec.get("zero_share", 0) > 0 and share_now["share"] >= spec.get("zero_from_share", 0.01)
                    and (n * 7 + k) % 100 < spec["zero_share"] * 100)
            t0 = time.time()
            try:
                r = rt_k.invoke_endpoint(EndpointName="ep", Body=ZERO if zero else GOOD,
                                         ContentType="application/json", Accept="application/json")
                body = r["Body"].read().decode()
                rec = [t0, time.time(), r.get("InvokedProductionVariant"), True, zero, "10" in body]
            except ClientError as e:
                rec = [t0, time.time(), e.response["ResponseMetadata"]["HTTPHeaders"].get(
                    "x-amzn-invoked-production-variant"), False, zero, e.response["Error"]["Code"]]
            except Exception as e:  # a connection error: a failed request too
                rec = [t0, time.time(), None, False, zero, repr(e)]
            with lock:
                requests.append(rec)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(spec.get("clients", 8))]
    for t in threads:
        t.start()
    time.sleep(spec.get("warmup", 1.0))
    started = time.time()
    kw = {"EndpointName": "ep", "EndpointConfigName": spec["to"]}
    if "deployment" in spec:
        kw["DeploymentConfig"] = spec["deployment"]
    sm.update_endpoint(**kw)
    # the waiter a runbook uses, started while the endpoint is Updating
    waited = {}

    def waiter():
        sm_w, _ = clients(base)
        sm_w.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 600})
        waited["t"] = time.time()

    waiting = threading.Thread(target=waiter)
    waiting.start()
    describes = []
    while True:
        d = sm.describe_endpoint(EndpointName="ep")
        pending = d.get("PendingDeploymentSummary")
        if pending:
            g = pending["ProductionVariants"][0]
            share_now["share"] = g["CurrentWeight"] / g["DesiredWeight"]
        describes.append({"t": time.time(), "status": d["EndpointStatus"],
                          "pending": d.get("PendingDeploymentSummary"),
                          "variants": d["ProductionVariants"]})
        if d["EndpointStatus"] != "Updating":
            break
        time.sleep(0.1)
    waiting.join()
    time.sleep(spec.get("after", 1.0))
    stop.set()
    for t in threads:
        t.join()
    final = sm.describe_endpoint(EndpointName="ep")
    return {"started": started, "waiter_done": waited.get("t"), "requests": requests, "describes": describes,
            "final": json.loads(json.dumps(final, default=str)), "journal": journal(work, started)}


def bad(base, work, arg):
    """Every refused request, by case: its error; the endpoint after.
    botocore's own checks are off: the server must refuse these itself."""
    sm, _ = clients(base, validate=False)
    lin = {"Type": "LINEAR", "WaitIntervalInSeconds": 1, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20}}
    bg = lambda r, **k: {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": r, **k}}
    cases = {
        "step_too_small": bg({**lin, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 5}}),
        "canary_too_big": bg({"Type": "CANARY", "WaitIntervalInSeconds": 1,
                              "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 80}}),
        "instance_count": bg({"Type": "CANARY", "WaitIntervalInSeconds": 1,
                              "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}}),
        "waits_over_timeout": bg({**lin, "WaitIntervalInSeconds": 200}, MaximumExecutionTimeoutInSeconds=900),
        "no_such_alarm": {**bg(lin), "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "nope"}]}},
        "rolling": {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                                            "WaitIntervalInSeconds": 1}},
    }
    out = {}
    for name, dc in cases.items():
        out[name] = error(lambda: sm.update_endpoint(EndpointName="ep", EndpointConfigName="v2", DeploymentConfig=dc))
    out["after_refusals"] = sm.describe_endpoint(EndpointName="ep")["EndpointStatus"]
    # one update under way: a second is refused, naming the first
    sm.update_endpoint(EndpointName="ep", EndpointConfigName="v2", DeploymentConfig=bg(
        {**lin, "WaitIntervalInSeconds": 30}, MaximumExecutionTimeoutInSeconds=600))
    out["second_update"] = error(lambda: sm.update_endpoint(EndpointName="ep", EndpointConfigName="v1"))
    out["weights_during_update"] = error(lambda: sm.update_endpoint_weights_and_capacities(
        EndpointName="ep", DesiredWeightsAndCapacities=[{"VariantName": "Blue", "DesiredWeight": 2}]))
    return out


def describe(base, work, arg):
    sm, rt = clients(base)
    d = sm.describe_endpoint(EndpointName="ep")
    r = rt.invoke_endpoint(EndpointName="ep", Body=GOOD, ContentType="application/json")
    return {"describe": json.loads(json.dumps(d, default=str)), "invoked": r.get("InvokedProductionVariant"),
            "body": r["Body"].read().decode()}


def update_to(base, work, arg):
    """Starts an update (arg: {to, deployment}) and returns at once."""
    spec = json.loads(arg)
    sm, _ = clients(base)
    kw = {"EndpointName": "ep", "EndpointConfigName": spec["to"]}
    if "deployment" in spec:
        kw["DeploymentConfig"] = spec["deployment"]
    return {"error": error(lambda: sm.update_endpoint(**kw))}


def wait(base, work, arg):
    sm, _ = clients(base)
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return {"describe": json.loads(json.dumps(sm.describe_endpoint(EndpointName="ep"), default=str))}


def experiment(base, work, arg):
    """A shadow test over its schedule, then one promoted with
    StopInferenceExperiment, then the refusals."""
    sm, rt = clients(base, validate=False)
    variants = [
        {"ModelName": "add", "VariantName": "Blue", "InfrastructureConfig": {
            "InfrastructureType": "RealTimeInference",
            "RealTimeInferenceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}},
        {"ModelName": "mod", "VariantName": "Shadow", "InfrastructureConfig": {
            "InfrastructureType": "RealTimeInference",
            "RealTimeInferenceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}},
    ]

    def create(name, seconds, **kw):
        now = time.time()
        return sm.create_inference_experiment(
            Name=name, Type="ShadowMode", RoleArn="arn:aws:iam::123456789012:role/sagemaker",
            EndpointName="ep", ModelVariants=variants,
            Schedule={"StartTime": now, "EndTime": now + seconds},
            ShadowModeConfig={"SourceModelVariantName": "Blue",
                              "ShadowModelVariants": [{"ShadowModelVariantName": "Shadow", "SamplingPercentage": 50}]},
            **kw)

    def until(name, status, limit=30):
        t = time.time()
        while True:
            d = sm.describe_inference_experiment(Name=name)
            if d["Status"] == status:
                return d
            if time.time() - t > limit:
                raise RuntimeError(f"{name} is {d['Status']}, not {status}: {d.get('StatusReason')}")
            time.sleep(0.2)

    out = {}
    create("shadow-test", 8, DataStorageConfig={"Destination": "file://" + work + "/exp-capture"})
    running = until("shadow-test", "Running")
    out["running"] = running
    out["endpoint_running"] = sm.describe_endpoint(EndpointName="ep")
    out["update_during"] = error(lambda: sm.update_endpoint(EndpointName="ep", EndpointConfigName="v2"))
    out["second"] = error(lambda: create("another", 60))
    answered = []
    for _ in range(400):
        r = rt.invoke_endpoint(EndpointName="ep", Body=GOOD, ContentType="application/json")
        answered.append(r["InvokedProductionVariant"])
    out["answered"] = answered
    # the side-by-side metrics, through neorun's own client (boto3 drops the field)
    import subprocess
    cli = [sys.argv[5], "endpoint", "--url", base, "--auth-token", sys.argv[6], "experiment", "shadow-test"]
    out["metrics_running"] = json.loads(subprocess.run(cli, check=True, capture_output=True).stdout)["Metrics"]
    done = until("shadow-test", "Completed")
    out["completed"] = done
    out["endpoint_after"] = sm.describe_endpoint(EndpointName="ep")
    out["after_answer"] = rt.invoke_endpoint(EndpointName="ep", Body=GOOD, ContentType="application/json")["Body"].read().decode()
    out["metrics_final"] = json.loads(subprocess.run(cli, check=True, capture_output=True).stdout)["Metrics"]

    create("promote-test", 600)
    until("promote-test", "Running")
    out["bad_stop"] = error(lambda: sm.stop_inference_experiment(
        Name="promote-test", ModelVariantActions={"Blue": "Remove", "Shadow": "Promote"}))
    sm.stop_inference_experiment(Name="promote-test", ModelVariantActions={"Blue": "Retain", "Shadow": "Promote"},
                                 Reason="the shadow is better")
    out["promoted"] = until("promote-test", "Completed")
    out["endpoint_promoted"] = sm.describe_endpoint(EndpointName="ep")
    r = rt.invoke_endpoint(EndpointName="ep", Body=GOOD, ContentType="application/json")
    out["promoted_answer"] = [r["InvokedProductionVariant"], r["Body"].read().decode()]
    out["list"] = sm.list_inference_experiments()["InferenceExperiments"]
    now = time.time()
    out["refused"] = {
        "no_endpoint": error(lambda: sm.create_inference_experiment(
            Name="x1", Type="ShadowMode", RoleArn="arn:aws:iam::123456789012:role/r", EndpointName="nope",
            ModelVariants=variants, ShadowModeConfig={"SourceModelVariantName": "Blue", "ShadowModelVariants": [
                {"ShadowModelVariantName": "Shadow", "SamplingPercentage": 50}]})),
        "sampling_zero": error(lambda: sm.create_inference_experiment(
            Name="x2", Type="ShadowMode", RoleArn="arn:aws:iam::123456789012:role/r", EndpointName="ep",
            ModelVariants=[{**variants[0], "ModelName": "mod"}, {**variants[1], "ModelName": "add"}],
            ShadowModeConfig={"SourceModelVariantName": "Blue", "ShadowModelVariants": [
                {"ShadowModelVariantName": "Shadow", "SamplingPercentage": 0}]})),
        "ended": error(lambda: sm.create_inference_experiment(
            Name="x3", Type="ShadowMode", RoleArn="arn:aws:iam::123456789012:role/r", EndpointName="ep",
            ModelVariants=variants, Schedule={"StartTime": now - 100, "EndTime": now - 10},
            ShadowModeConfig={"SourceModelVariantName": "Blue", "ShadowModelVariants": [
                {"ShadowModelVariantName": "Shadow", "SamplingPercentage": 50}]})),
        "wrong_source_model": error(lambda: sm.create_inference_experiment(
            Name="x4", Type="ShadowMode", RoleArn="arn:aws:iam::123456789012:role/r", EndpointName="ep",
            ModelVariants=[{**variants[0], "ModelName": "add"}, variants[1]],
            ShadowModeConfig={"SourceModelVariantName": "Blue", "ShadowModelVariants": [
                {"ShadowModelVariantName": "Shadow", "SamplingPercentage": 50}]})),
        "stop_completed": error(lambda: sm.stop_inference_experiment(
            Name="shadow-test", ModelVariantActions={"Shadow": "Remove"})),
    }
    return out


def retain(base, work, arg):
    """RetainAllVariantProperties and ExcludeRetainedVariantProperties."""
    sm, _ = clients(base)
    sm.update_endpoint_weights_and_capacities(
        EndpointName="ep", DesiredWeightsAndCapacities=[{"VariantName": "Blue", "DesiredWeight": 3}])
    sm.create_endpoint_config(EndpointConfigName="v1b", ProductionVariants=[
        {"VariantName": "Blue", "ModelName": "add", "InitialVariantWeight": 1}],
        DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                           "DestinationS3Uri": "file://" + work + "/retain-capture",
                           "CaptureOptions": [{"CaptureMode": "Input"}]})
    out = {}
    waiter = sm.get_waiter("endpoint_in_service")

    def shown():
        waiter.wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        d = sm.describe_endpoint(EndpointName="ep")
        return {"config": d["EndpointConfigName"], "weight": d["ProductionVariants"][0]["CurrentWeight"],
                "capture": "DataCaptureConfig" in d}

    sm.update_endpoint(EndpointName="ep", EndpointConfigName="v1b", RetainAllVariantProperties=True)
    out["retained"] = shown()
    sm.update_endpoint(EndpointName="ep", EndpointConfigName="v1b", RetainAllVariantProperties=True,
                       ExcludeRetainedVariantProperties=[{"VariantPropertyType": "DesiredWeight"},
                                                         {"VariantPropertyType": "DataCaptureConfig"}])
    out["excluded"] = shown()
    out["exclude_alone"] = error(lambda: sm.update_endpoint(
        EndpointName="ep", EndpointConfigName="v1", ExcludeRetainedVariantProperties=[{"VariantPropertyType": "DesiredWeight"}]))
    return out


def cloudwatch(base, work, arg):
    """Stock boto3 `cloudwatch` (smithy-rpc-v2-cbor): an alarm defined,
    read back, forced to ALARM during a bake (how AWS suggests testing a
    rollback), its history; bad definitions refused."""
    sm, _ = clients(base)
    cw = boto3.client("cloudwatch", endpoint_url=base, region_name="us-east-1", aws_access_key_id=KEY_ID,
                      aws_secret_access_key=SECRET, config=Config(retries={"total_max_attempts": 1}))
    cw.put_metric_alarm(
        AlarmName="green-latency", Namespace="AWS/SageMaker", MetricName="ModelLatency",
        Dimensions=[{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "Green"}],
        ExtendedStatistic="p99", Period=10, EvaluationPeriods=3, DatapointsToAlarm=2, Threshold=250000.0,
        ComparisonOperator="GreaterThanThreshold", AlarmActions=["arn:aws:sns:us-east-1:123456789012:pager"])
    out = {"described": cw.describe_alarms(AlarmNames=["green-latency"])["MetricAlarms"]}
    out["refused"] = error(lambda: cw.put_metric_alarm(
        AlarmName="bad", Namespace="AWS/EC2", MetricName="CPUUtilization", Statistic="Average", Period=60,
        EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold"))
    out["unknown_state"] = error(lambda: cw.set_alarm_state(AlarmName="nope", StateValue="ALARM", StateReason="x"))
    dc = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "CANARY", "WaitIntervalInSeconds": 20, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
        "MaximumExecutionTimeoutInSeconds": 600},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "green-latency"}]}}
    sm.update_endpoint(EndpointName="ep", EndpointConfigName="v2", DeploymentConfig=dc)
    t = time.time()
    while True:
        d = sm.describe_endpoint(EndpointName="ep")
        p = d.get("PendingDeploymentSummary")
        if p and p["ProductionVariants"][0]["VariantStatus"][0]["Status"] == "Baking":
            break
        if time.time() - t > 30:
            raise RuntimeError(f"no bake: {d}")
        time.sleep(0.1)
    out["in_use"] = error(lambda: cw.delete_alarms(AlarmNames=["green-latency"]))
    cw.set_alarm_state(AlarmName="green-latency", StateValue="ALARM", StateReason="testing the rollback")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    out["endpoint"] = json.loads(json.dumps(sm.describe_endpoint(EndpointName="ep"), default=str))
    out["history"] = json.loads(json.dumps(cw.describe_alarm_history(AlarmName="green-latency")["AlarmHistoryItems"], default=str))
    out["state_after"] = cw.describe_alarms(AlarmNames=["green-latency"])["MetricAlarms"][0]["StateValue"]
    cw.delete_alarms(AlarmNames=["green-latency"])
    out["after_delete"] = cw.describe_alarms(AlarmNames=["green-latency"])["MetricAlarms"]
    return out


if __name__ == "__main__":
    mode, base, work = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else "{}"
    print(json.dumps({"setup": setup, "rollout": rollout, "bad": bad, "describe": describe,
                      "update_to": update_to, "wait": wait, "experiment": experiment,
                      "cloudwatch": cloudwatch, "retain": retain}[mode](base, work, arg), default=str))
