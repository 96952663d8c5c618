"""The Python package against real bundles. NEORUN_TEST_DIR holds what
tests/tests/python.rs made there: fraud-xgb.neo and fraud-mlp.neo signed
with k.key, fraud-mlp-ort.neo (its onnxruntime-engine bundle),
strings.neo (tests/onnxruntime/make_models.py's string-features model, on
onnxruntime), k.pub, other.pub (another key), unsigned.neo, and the neorun
binary's own refusal messages for the bad bundles (refusals.json)."""
import json
import os
import threading
import time

import numpy as np
import pytest

import neorun

D = os.environ["NEORUN_TEST_DIR"]
ROOT = os.environ["NEORUN_ROOT"]


def path(name):
    return os.path.join(D, name)


def sample():
    return np.loadtxt(os.path.join(ROOT, "models/fraud-xgb/sample.csv"), delimiter=",", dtype=np.float32)


def reference(model):
    doc = json.load(open(os.path.join(ROOT, "models", model, "expected.json")))
    return np.array(doc["outputs"][0]["data"], dtype=np.float64).reshape(-1, 2)


@pytest.fixture(scope="module", params=["fraud-xgb", "fraud-mlp"])
def model(request):
    return request.param, neorun.Model(path(request.param + ".neo"), trusted_key=path("k.pub"))


def test_metadata(model):
    name, m = model
    assert m.inputs == [{"name": "features", "dtype": "float32", "shape": ["N", 30]}]
    assert [o["name"] for o in m.outputs][-1] == "probabilities"
    assert m.manifest["model"]["name"] == name
    assert m.digest.startswith("sha256:") and len(m.digest) == 71
    assert name in repr(m)


def test_predict_equals_the_reference(model):
    name, m = model
    out = m.predict(sample())
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (8, 2)
    np.testing.assert_allclose(out["probabilities"], reference(name), atol=1e-5)
    if "label" in out:
        np.testing.assert_array_equal(out["label"], reference(name).argmax(axis=1))
    # the same by name, and as float64 (converted: same kind)
    np.testing.assert_array_equal(m.predict({"features": sample()})["probabilities"], out["probabilities"])
    np.testing.assert_allclose(m.predict(sample().astype(np.float64))["probabilities"], out["probabilities"])


def test_non_contiguous_and_fortran_arrays_give_the_same_answer(model):
    _, m = model
    x = sample()
    want = m.predict(x)["probabilities"]
    wide = np.zeros((8, 60), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(m.predict(wide[:, ::2])["probabilities"], want)
    np.testing.assert_array_equal(m.predict(np.asfortranarray(x))["probabilities"], want)
    np.testing.assert_array_equal(m.predict(x[::-1])["probabilities"], want[::-1])


def test_self_test(model):
    _, m = model
    r = m.self_test()
    assert r["cases"] >= 1 and r["max_abs_error"] < 1e-4


def test_many_threads_share_one_model(model):
    _, m = model
    rng = np.random.default_rng(7)
    batches = [sample()[rng.integers(0, 8, size=int(rng.integers(1, 64)))] for _ in range(64)]
    want = [m.predict(b)["probabilities"] for b in batches]
    got, errors = [None] * len(batches), []

    def work(k):
        try:
            for i in range(k, len(batches), 8):
                for _ in range(5):
                    r = m.predict(batches[i])["probabilities"]
                    if got[i] is not None:
                        assert np.array_equal(got[i], r)
                    got[i] = r
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_the_gil_is_released_while_the_model_runs():
    m = neorun.Model(path("fraud-xgb.neo"), trusted_key=path("k.pub"))
    x = np.tile(sample(), (200_000, 1))  # 1.6 M rows: about a second
    # how fast this thread counts when nothing else wants the GIL
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        n += 1
    rate = n / 0.2
    window = {}

    def run():
        window["start"] = time.perf_counter()
        m.predict(x)
        window["end"] = time.perf_counter()

    t = threading.Thread(target=run)
    t.start()
    ticks = 0
    while t.is_alive():
        ticks += 1
        time.perf_counter()
    t.join()
    seconds = window["end"] - window["start"]
    # holding the GIL, predict would leave this thread at most one switch
    # interval (5 ms) of counting; released, it counts on another core
    assert ticks > 0.1 * rate * seconds, f"{ticks} ticks in {seconds:.2f} s of predict at {rate:.0f}/s alone"


def test_refusals_are_the_binarys_with_typed_exceptions(tmp_path):
    said = json.load(open(path("refusals.json")))
    bad = tmp_path / "tampered.neo"
    raw = bytearray(open(path("fraud-xgb.neo"), "rb").read())
    raw[len(raw) // 2] ^= 1
    bad.write_bytes(bytes(raw))
    with pytest.raises(neorun.BundleRefused) as e:
        neorun.Model(bad, trusted_key=path("k.pub"))
    assert str(e.value) == said["tampered"]
    with pytest.raises(neorun.BundleRefused) as e:
        neorun.Model(path("fraud-xgb.neo"), trusted_key=path("other.pub"))
    assert str(e.value) == said["other_key"]
    with pytest.raises(neorun.BundleRefused) as e:
        neorun.Model(path("unsigned.neo"), trusted_key=path("k.pub"))
    assert str(e.value) == said["unsigned"]
    # opened when allowed, as the binary's --allow-unsigned
    assert neorun.Model(path("unsigned.neo"), allow_unsigned=True).predict(sample())["label"].shape == (8,)
    with pytest.raises(neorun.BundleRefused):
        neorun.Model(tmp_path / "missing.neo", trusted_key=path("k.pub"))
    with pytest.raises(neorun.NeorunError, match="no trusted key given"):
        neorun.Model(path("fraud-xgb.neo"))
    with pytest.raises(neorun.NeorunError, match="trusted_key"):
        neorun.Model(path("fraud-xgb.neo"), trusted_key=path("fraud-xgb.neo"))
    # the refused file is untouched
    assert bad.read_bytes() == bytes(raw)


def test_bad_inputs_are_refused_by_name():
    m = neorun.Model(path("fraud-xgb.neo"), trusted_key=path("k.pub"))
    with pytest.raises(neorun.BadInput, match=r"expects shape \[N,30\], got \[2, 5\]"):
        m.predict(np.zeros((2, 5), np.float32))
    with pytest.raises(neorun.BadInput, match="float32"):
        m.predict(np.array([["a"] * 30]))
    with pytest.raises(neorun.BadInput, match="unknown input `feature`"):
        m.predict({"features": sample(), "feature": sample()})
    with pytest.raises(neorun.BadInput, match="no input `features`"):
        m.predict({"x": sample()})
    with pytest.raises(neorun.BadInput, match="no rows"):
        m.predict(np.zeros((0, 30), np.float32))
    # an object it cannot make an array of
    with pytest.raises((neorun.BadInput, ValueError, TypeError)):
        m.predict(object())
    # still fine afterwards
    assert m.predict(sample())["label"].shape == (8,)


def test_errors_are_neorun_errors():
    for e in (neorun.BundleRefused, neorun.BadInput, neorun.ModelError):
        assert issubclass(e, neorun.NeorunError)


def test_onnxruntime_bundles_run_on_this_interpreters_onnxruntime():
    # fraud-mlp compiled with --engine onnxruntime; neither VIRTUAL_ENV nor
    # ORT_DYLIB_PATH is set here: the library is found in the site-packages
    # of the interpreter that imported neorun (pip install onnxruntime)
    assert "VIRTUAL_ENV" not in os.environ and "ORT_DYLIB_PATH" not in os.environ
    m = neorun.Model(path("fraud-mlp-ort.neo"), trusted_key=path("k.pub"))
    assert m.manifest["engine"]["name"] == "onnxruntime"
    assert m.running.startswith("onnxruntime"), m.running
    out = m.predict(sample())
    np.testing.assert_allclose(out["probabilities"], reference("fraud-mlp"), atol=1e-5)


def test_string_inputs_and_outputs_are_python_strings():
    # a city name (str) and an amount in; a score and a str tier out, as
    # onnxruntime's own Python API gives them (object arrays of str)
    m = neorun.Model(path("strings.neo"), trusted_key=path("k.pub"))
    assert [i["dtype"] for i in m.inputs] == ["object", "float32"]
    amount = np.array([[0.25], [3.0], [0.0]], np.float32)
    for city in (["Paris", "Berlin", "New York, NY"], np.array(["Paris", "Berlin", "New York, NY"]),
                 np.array(["Paris", "Berlin", "New York, NY"], dtype=object)):
        out = m.predict({"city": city, "amount": amount})
        np.testing.assert_allclose(out["score"], [[0.25], [2.5], [1.5]])
        assert out["tier"].dtype == object and out["tier"].tolist() == [["low"], ["high"], ["high"]]
    with pytest.raises(neorun.BadInput, match=r"input `city`, element 1: a int, not a str"):
        m.predict({"city": np.array(["Paris", 3], dtype=object), "amount": amount[:2]})
    with pytest.raises(neorun.BadInput, match="input `city` is float64; the model takes strings"):
        m.predict({"city": np.zeros(3), "amount": amount})
    r = m.self_test()
    assert r["cases"] >= 1 and r["max_abs_error"] < 1e-6, r
