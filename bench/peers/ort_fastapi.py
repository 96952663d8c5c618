#!/usr/bin/env python3
"""The do-it-yourself peer of `neorun serve`: an ONNX model in onnxruntime
behind FastAPI + uvicorn, answering SageMaker-style POST /invocations with
text/csv or application/json ({"instances": rows} or {"inputs": nested}).

Usage: ort_fastapi.py MODEL.onnx PORT
"""
import io
import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response

model_path, port = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
app = FastAPI()


@app.get("/ping")
def ping():
    return {"status": "healthy"}


@app.post("/invocations")
async def invocations(request: Request):
    body = await request.body()
    if request.headers.get("content-type", "").startswith("text/csv"):
        x = np.loadtxt(io.BytesIO(body), delimiter=",", dtype=np.float32, ndmin=2)
    else:
        doc = json.loads(body)
        x = np.asarray(doc.get("instances", doc.get("inputs")), dtype=np.float32)
    outs = sess.run(None, {inp.name: x})
    result = {"outputs": [{"name": o.name, "shape": list(v.shape), "data": np.asarray(v).reshape(-1).tolist()}
                          for o, v in zip(sess.get_outputs(), outs)]}
    return Response(json.dumps(result), media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
