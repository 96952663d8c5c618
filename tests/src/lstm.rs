//! The ONNX LSTM fixtures tests/recurrent.rs and tests/arm.rs share.

use std::path::Path;

use crate::venv_python;

/// ONNX LSTMs (built with the `onnx` package) for tests/recurrent.rs and
/// tests/arm.rs, each `NAME.tar.gz` with test_data_set_0, `NAME.json` (a
/// predict request) and `NAME.want.json` (Y, Y_h, Y_c flattened), the
/// expected values from onnxruntime in the venv (for `layout = 1`, which
/// onnxruntime refuses, from its `layout = 0` twin on transposed values):
/// `reverse` (initial states as inputs), `bidir_lens` (bidirectional,
/// batch-first, a length per batch row), `peep_clip` (peepholes, clip).
pub fn lstm_fixtures(d: &Path) {
    let script = r#"
import json, os, sys, tarfile
import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
d = sys.argv[1]
rng = np.random.default_rng(11)
f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)

def model(name, attrs, seq, batch, inp, hid, dirs, extra_inputs, feeds, peep=False, layout=0):
    inits = [nh.from_array(f(dirs, 4 * hid, inp), "W"), nh.from_array(f(dirs, 4 * hid, hid), "R"),
             nh.from_array(f(dirs, 8 * hid), "B")]
    names = ["x", "W", "R", "B"] + extra_inputs
    if peep:
        while len(names) < 7:
            names.append("")
        inits.append(nh.from_array(f(dirs, 3 * hid), "P"))
        names.append("P")
    xs = [batch, seq, inp] if layout else [seq, batch, inp]
    ins = [h.make_tensor_value_info("x", T.FLOAT, xs)]
    st = [batch, dirs, hid] if layout else [dirs, batch, hid]
    for n in extra_inputs:
        if n == "lens":
            ins.append(h.make_tensor_value_info("lens", T.INT32, [batch]))
        elif n:
            ins.append(h.make_tensor_value_info(n, T.FLOAT, st))
    outs = [h.make_tensor_value_info(o, T.FLOAT, None) for o in ["Y", "Yh", "Yc"]]
    node = h.make_node("LSTM", names, ["Y", "Yh", "Yc"], hidden_size=hid, layout=layout, **attrs)
    m = h.make_model(h.make_graph([node], name, ins, outs, inits), opset_imports=[h.make_opsetid("", 14)], ir_version=8)
    onnx.save(m, os.path.join(d, f"{name}.onnx"))
    feeds = {"x": f(*xs), **feeds}
    if layout:
        # onnxruntime runs layout 0 only: its twin, on transposed values
        node0 = h.make_node("LSTM", names, ["Y", "Yh", "Yc"], hidden_size=hid, **attrs)
        ins0 = [h.make_tensor_value_info("x", T.FLOAT, [seq, batch, inp])] + ins[1:]
        m0 = h.make_model(h.make_graph([node0], name, ins0, outs, inits), opset_imports=[h.make_opsetid("", 14)], ir_version=8)
        s = ort.InferenceSession(m0.SerializeToString(), providers=["CPUExecutionProvider"])
        y, yh, yc = s.run(None, {**feeds, "x": feeds["x"].transpose(1, 0, 2)})
        res = [y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)]
    else:
        res = ort.InferenceSession(os.path.join(d, f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    t = os.path.join(d, name + "_data", "test_data_set_0")
    os.makedirs(t)
    for k, i in enumerate(ins):
        open(f"{t}/input_{k}.pb", "wb").write(nh.from_array(feeds[i.name], i.name).SerializeToString())
    for k, (n, v) in enumerate(zip(["Y", "Yh", "Yc"], res)):
        open(f"{t}/output_{k}.pb", "wb").write(nh.from_array(v, n).SerializeToString())
    with tarfile.open(os.path.join(d, f"{name}.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(d, f"{name}.onnx"), f"{name}.onnx")
        tar.add(t, "test_data_set_0")
    json.dump({"inputs": {k: v.tolist() for k, v in feeds.items()}}, open(os.path.join(d, f"{name}.json"), "w"))
    json.dump([r.ravel().tolist() for r in res], open(os.path.join(d, f"{name}.want.json"), "w"))

# reverse, initial states as inputs
model("reverse", {"direction": "reverse"}, 6, 2, 5, 16, 1, ["", "h0", "c0"], {"h0": f(1, 2, 16), "c0": f(1, 2, 16)})
# bidirectional, batch-first, each batch row its own length
model("bidir_lens", {"direction": "bidirectional"}, 5, 3, 4, 12, 2, ["lens"],
      {"lens": np.array([5, 2, 4], np.int32)}, layout=1)
# peepholes and a cell clip
model("peep_clip", {"clip": 0.8}, 7, 1, 3, 9, 1, [], {}, peep=True)
"#;
    let o = std::process::Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
