//! `import neorun`: a neoc bundle from Python. `neorun.Model(path,
//! trusted_key=…)` verifies and opens a bundle exactly as the `neorun`
//! binary does (the same library, the same checks, the same messages, as
//! exceptions); `.predict(x)` takes numpy arrays and gives numpy arrays,
//! with the GIL released while the model runs, so threads run in parallel.
//! One `Model` may be used from many threads at once.

use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use neoc_bundle::manifest::{Dim, TensorSpec};
use neoc_bundle::sign::TrustedKey;
use neoc_runtime::codec::Batch;
use neoc_runtime::model::PredictError;
use neoc_runtime::{Model as Inner, OpenOptions};
use tract_core::prelude::{DatumType, Tensor};

create_exception!(neorun, NeorunError, PyException, "Every error neorun raises.");
create_exception!(
    neorun,
    BundleRefused,
    NeorunError,
    "The bundle did not pass its checks: signature, digests, format, target or runtime version (the binary's exit 3)."
);
create_exception!(
    neorun,
    BadInput,
    NeorunError,
    "The inputs do not fit the model: names, dtypes or shapes (the server's 400)."
);
create_exception!(neorun, ModelError, NeorunError, "The model failed on valid inputs, or its self-test failed.");

/// A verified, opened bundle.
#[pyclass(frozen, module = "neorun")]
struct Model {
    inner: Inner,
    path: PathBuf,
}

fn shape_list<'py>(py: Python<'py>, shape: &[Dim]) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<Py<PyAny>> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.into_pyobject(py).map(|v| v.into_any().unbind()).map_err(PyErr::from),
            Dim::Symbol(s) => s.into_pyobject(py).map(|v| v.into_any().unbind()).map_err(PyErr::from),
        })
        .collect::<PyResult<_>>()?;
    PyList::new(py, items)
}

fn specs<'py>(py: Python<'py>, specs: &[TensorSpec]) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for s in specs {
        let d = PyDict::new(py);
        d.set_item("name", &s.name)?;
        d.set_item("dtype", numpy_dtype(&s.dtype))?;
        d.set_item("shape", shape_list(py, &s.shape)?)?;
        out.append(d)?;
    }
    Ok(out)
}

/// The numpy name of a manifest dtype.
fn numpy_dtype(d: &str) -> &str {
    match d {
        "f16" => "float16",
        "f32" => "float32",
        "f64" => "float64",
        "i8" => "int8",
        "i16" => "int16",
        "i32" => "int32",
        "i64" => "int64",
        "u8" => "uint8",
        "u16" => "uint16",
        "u32" => "uint32",
        "u64" => "uint64",
        "bool" => "bool",
        // numpy keeps strings of any length as Python objects (onnxruntime's
        // Python API answers with such arrays too)
        "string" => "object",
        other => other,
    }
}

/// One numpy array as a tensor of the manifest's dtype: converted by numpy
/// when the cast keeps the kind (float64 → float32), refused otherwise.
fn to_tensor(spec: &TensorSpec, x: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let py = x.py();
    let want = numpy_dtype(&spec.dtype);
    // numpy itself only off the common path (an ndarray of the right dtype)
    let arr = if x.is_instance_of::<PyUntypedArray>() {
        x.clone()
    } else {
        py.import("numpy")?.call_method1("asarray", (x,))?
    };
    let have: String = arr.getattr("dtype")?.getattr("name")?.extract()?;
    if spec.dtype == "string" {
        return string_tensor(spec, &arr, &have);
    }
    let arr = if have == want {
        arr
    } else {
        let np = py.import("numpy")?;
        let can: bool = np.call_method1("can_cast", (arr.getattr("dtype")?, want, "same_kind"))?.extract()?;
        if !can {
            return Err(BadInput::new_err(format!(
                "input `{}` is {have}; the model takes {want} (convert it: x.astype(\"{want}\"))",
                spec.name
            )));
        }
        arr.call_method1("astype", (want,))?
    };
    let arr = arr.cast_into::<PyUntypedArray>().map_err(|e| BadInput::new_err(e.to_string()))?;
    macro_rules! tensor {
        ($t:ty) => {{
            let a = arr.cast::<PyArrayDyn<$t>>().map_err(|e| BadInput::new_err(e.to_string()))?;
            let r = a.try_readonly().map_err(|e| BadInput::new_err(format!("input `{}`: {e}", spec.name)))?;
            let shape = r.shape().to_vec();
            // one copy: straight from the buffer when it is in C order (a
            // Fortran-order buffer is contiguous too, but column by column),
            // else element by element in logical order
            match r.as_slice() {
                Ok(s) if a.is_c_contiguous() => Tensor::from_shape::<$t>(&shape, s),
                _ => Tensor::from_shape::<$t>(&shape, &r.as_array().iter().cloned().collect::<Vec<$t>>()),
            }
            .map_err(|e| BadInput::new_err(format!("input `{}`: {e}", spec.name)))?
        }};
    }
    Ok(match want {
        "float32" => tensor!(f32),
        "float64" => tensor!(f64),
        "int8" => tensor!(i8),
        "int16" => tensor!(i16),
        "int32" => tensor!(i32),
        "int64" => tensor!(i64),
        "uint8" => tensor!(u8),
        "uint16" => tensor!(u16),
        "uint32" => tensor!(u32),
        "uint64" => tensor!(u64),
        "bool" => tensor!(bool),
        other => {
            return Err(BadInput::new_err(format!("input `{}`: dtype {other} is not supported from Python", spec.name)))
        }
    })
}

/// An array of `str` (numpy's `<U` or object arrays of `str`) as a string
/// tensor; anything else in it is refused by position.
fn string_tensor(spec: &TensorSpec, arr: &Bound<'_, PyAny>, have: &str) -> PyResult<Tensor> {
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if kind != "U" && kind != "O" {
        return Err(BadInput::new_err(format!(
            "input `{}` is {have}; the model takes strings (send str values, e.g. numpy.array([...], dtype=object))",
            spec.name
        )));
    }
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    let items = arr.call_method0("ravel")?.call_method0("tolist")?;
    let mut v = Vec::new();
    for (i, x) in items.try_iter()?.enumerate() {
        let x = x?;
        v.push(x.extract::<String>().map_err(|_| {
            let ty = x.get_type().name().map(|n| n.to_string()).unwrap_or_default();
            BadInput::new_err(format!("input `{}`, element {i}: a {ty}, not a str", spec.name))
        })?);
    }
    neoc_runtime::tensors::string_tensor(&shape, v)
        .map_err(|e| BadInput::new_err(format!("input `{}`: {e}", spec.name)))
}

/// A tensor as a numpy array (one copy out).
fn to_array<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    macro_rules! array {
        ($t:ty) => {{
            let view = t.try_as_plain_ram().map_err(|e| ModelError::new_err(e.to_string()))?;
            let s = view.as_slice::<$t>().map_err(|e| ModelError::new_err(e.to_string()))?;
            numpy::PyArray1::<$t>::from_slice(py, s).reshape(t.shape())?.into_any()
        }};
    }
    Ok(match t.datum_type() {
        DatumType::F32 => array!(f32),
        DatumType::F64 => array!(f64),
        DatumType::I8 => array!(i8),
        DatumType::I16 => array!(i16),
        DatumType::I32 => array!(i32),
        DatumType::I64 => array!(i64),
        DatumType::U8 => array!(u8),
        DatumType::U16 => array!(u16),
        DatumType::U32 => array!(u32),
        DatumType::U64 => array!(u64),
        DatumType::Bool => array!(bool),
        DatumType::String => {
            let view = t.try_as_plain_ram().map_err(|e| ModelError::new_err(e.to_string()))?;
            let s = view.as_slice::<String>().map_err(|e| ModelError::new_err(e.to_string()))?;
            let list = PyList::new(py, s)?;
            py.import("numpy")?
                .call_method(
                    "array",
                    (list,),
                    Some(&{
                        let kw = PyDict::new(py);
                        kw.set_item("dtype", "object")?;
                        kw
                    }),
                )?
                .call_method1("reshape", (t.shape().to_vec(),))?
        }
        dt => {
            // f16 and the rest: as float32
            let f = t.cast_to::<f32>().map_err(|e| ModelError::new_err(format!("output of type {dt:?}: {e}")))?;
            let view = f.try_as_plain_ram().map_err(|e| ModelError::new_err(e.to_string()))?;
            let s = view.as_slice::<f32>().map_err(|e| ModelError::new_err(e.to_string()))?;
            numpy::PyArray1::<f32>::from_slice(py, s).reshape(t.shape())?.into_any()
        }
    })
}

fn predict_error(e: PredictError) -> PyErr {
    match e {
        PredictError::BadRequest(b) => BadInput::new_err(b.to_string()),
        PredictError::Engine(m) => ModelError::new_err(format!("inference failed: {m}")),
    }
}

/// `trusted_key`: a path, or a list of paths.
fn trusted_keys(k: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<TrustedKey>> {
    let Some(k) = k else { return Ok(Vec::new()) };
    let paths: Vec<PathBuf> = if k.is_instance_of::<PyList>() || k.is_instance_of::<pyo3::types::PyTuple>() {
        k.extract()?
    } else {
        vec![k.extract()?]
    };
    paths
        .iter()
        .map(|p| TrustedKey::from_file(p).map_err(|e| NeorunError::new_err(format!("trusted_key: {e}"))))
        .collect()
}

#[pymethods]
impl Model {
    /// Verifies the bundle at `path` (signature first, then every digest)
    /// and opens it. `trusted_key`: the signer's public key (minisign
    /// `.pub`), or a list of them.
    #[new]
    #[pyo3(signature = (path, trusted_key=None, *, allow_unsigned=false, threads=None, kernels="own"))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        trusted_key: Option<&Bound<'_, PyAny>>,
        allow_unsigned: bool,
        threads: Option<usize>,
        kernels: &str,
    ) -> PyResult<Model> {
        let trusted_keys = trusted_keys(trusted_key)?;
        if trusted_keys.is_empty() && !allow_unsigned {
            return Err(NeorunError::new_err(
                "no trusted key given\nhint: pass trusted_key=\"KEY.pub\" (the signer's public key), or allow_unsigned=True for unsigned bundles",
            ));
        }
        let kernels = match kernels {
            "own" => neoc_runtime::Kernels::Own,
            "tract" => neoc_runtime::Kernels::Tract,
            other => return Err(NeorunError::new_err(format!("kernels {other:?}: use \"own\" or \"tract\""))),
        };
        let options = OpenOptions {
            trusted_keys,
            allow_unsigned,
            kernels,
            threads: threads.map(|t| t.max(1)),
            ..Default::default()
        };
        let p = path.clone();
        let inner = py.detach(move || Inner::open(&p, &options)).map_err(|e| BundleRefused::new_err(e.to_string()))?;
        Ok(Model { inner, path })
    }

    /// The inputs: a list of `{"name", "dtype", "shape"}` (a dimension is an
    /// int, or the name of a size chosen per call such as `"N"`).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.inner.manifest.inputs)
    }

    /// The outputs, as `inputs`.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.inner.manifest.outputs)
    }

    /// The bundle's manifest, as a dict.
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.inner.manifest).map_err(|e| NeorunError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The digest of the bundle's manifest, as signed (`sha256:HEX`).
    #[getter]
    fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// What runs it: engine, kernels, threads, any fallback taken.
    #[getter]
    fn running(&self) -> &str {
        &self.inner.running
    }

    /// Runs the model. `x`: one array (a model with one input), or a dict
    /// of input name → array. Gives a dict of output name → array. Arrays of
    /// another dtype of the same kind are converted (float64 → float32);
    /// others are refused.
    fn predict<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let specs = &self.inner.manifest.inputs;
        let mut inputs = Vec::with_capacity(specs.len());
        if let Ok(d) = x.cast::<PyDict>() {
            for s in specs {
                let v = d.get_item(&s.name)?.ok_or_else(|| {
                    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    BadInput::new_err(format!("no input `{}`: the model takes {}", s.name, names.join(", ")))
                })?;
                inputs.push(to_tensor(s, &v)?);
            }
            for k in d.keys() {
                let k: String = k.extract()?;
                if !specs.iter().any(|s| s.name == k) {
                    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    return Err(BadInput::new_err(format!(
                        "unknown input `{k}`: the model takes {}",
                        names.join(", ")
                    )));
                }
            }
        } else {
            if specs.len() != 1 {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(BadInput::new_err(format!(
                    "this model has {} inputs ({}): pass a dict of name → array",
                    specs.len(),
                    names.join(", ")
                )));
            }
            inputs.push(to_tensor(&specs[0], x)?);
        }
        let rows = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let batch = Batch { rows, inputs };
        let outputs = py.detach(|| self.inner.predict(batch)).map_err(predict_error)?;
        let out = PyDict::new(py);
        for (name, t) in self.inner.output_names().iter().zip(&outputs) {
            out.set_item(name, to_array(py, t)?)?;
        }
        Ok(out)
    }

    /// Runs the bundle's own test vectors against their expected outputs
    /// (the device health check): `{"cases", "max_abs_error"}`, or
    /// `ModelError` saying which vector and output is off.
    fn self_test<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r =
            py.detach(|| self.inner.self_test()).map_err(|e| ModelError::new_err(format!("self-test failed: {e}")))?;
        let d = PyDict::new(py);
        d.set_item("cases", r.cases)?;
        d.set_item("max_abs_error", r.max_abs_error)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "neorun.Model({:?}, name={:?}, version={:?}, target={:?})",
            self.path.display().to_string(),
            self.inner.manifest.model.name,
            self.inner.manifest.model.version,
            self.inner.manifest.target.name
        )
    }
}

#[pymodule]
fn neorun(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // engines' libraries installed with pip (onnxruntime) are looked for in
    // this interpreter's site-packages: a venv's python run without
    // `activate` sets no VIRTUAL_ENV for neorun to find them by
    let site = m.py().import("site")?;
    let mut folders: Vec<String> = site.call_method0("getsitepackages")?.extract().unwrap_or_default();
    if let Ok(user) = site.call_method0("getusersitepackages").and_then(|u| u.extract::<String>()) {
        folders.push(user);
    }
    for f in folders {
        neoc_runtime::engine::dylib::add_site_packages(f.into());
    }
    m.add_class::<Model>()?;
    m.add("NeorunError", m.py().get_type::<NeorunError>())?;
    m.add("BundleRefused", m.py().get_type::<BundleRefused>())?;
    m.add("BadInput", m.py().get_type::<BadInput>())?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
