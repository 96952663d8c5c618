#!/usr/bin/env bash
# neoc bundles (run by neorun's engine) vs ONNX Runtime on the sample models
# and the ONNX model-zoo architectures shipped in the onnx wheel (given random
# weights here, not committed). Prints a table; writes bench/out/zoo.json.
# Pass model names to run a subset: bench/zoo/run.sh squeezenet resnet50
# BENCH_ROUNDS (default 3) sets the alternating rounds per configuration.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
[ -x /usr/bin/time ] || { echo "bench/zoo needs GNU time for peak RSS: apt-get install time" >&2; exit 1; }
zoo="bench/out/zoo"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(squeezenet shufflenet inception_v1 resnet50 densenet121 inception_v2 bvlc_alexnet zfnet512 vgg19 encoder)
# the OpenVINO engine's library, from the venv's openvino package
OPENVINO_LIB_PATH="$("$venv/bin/python" -c 'import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), "libs"))')"
export OPENVINO_LIB_PATH
# the onnxruntime engine's library: the same onnxruntime as the Python side
ORT_DYLIB_PATH="$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
export ORT_DYLIB_PATH
"$venv/bin/python" bench/zoo/prepare.py "$zoo" "${names[@]}" 2>/dev/null
list="bench/out/zoo-models.json"
{
  echo "["
  echo " {\"name\": \"fraud-mlp\", \"source\": \"models/fraud-mlp/model.tar.gz\", \"onnx\": \"models/fraud-mlp/model.onnx\", \"input_file\": \"models/fraud-mlp/sample.csv\", \"tabular\": true},"
  echo " {\"name\": \"fraud-xgb\", \"source\": \"models/fraud-xgb/model.tar.gz\", \"onnx\": \"models/fraud-xgb/model.onnx\", \"input_file\": \"models/fraud-xgb/sample.csv\", \"tabular\": true, \"trees\": true},"
  echo " {\"name\": \"image-cnn\", \"source\": \"models/image-cnn/model.tar.gz\", \"onnx\": \"models/image-cnn/model.onnx\"}"
  for n in "${names[@]}"; do
    (cd "$zoo/$n" && tar czf model.tar.gz model.onnx test_data_set_0)
    echo ",{\"name\": \"$n\", \"source\": \"$zoo/$n/model.tar.gz\", \"onnx\": \"$zoo/$n/model.onnx\"}"
  done
  echo "]"
} > "$list"
"$venv/bin/python" bench/zoo/bench.py ./target/release/neoc ./target/release/neorun "$list" bench/out/zoo.json
