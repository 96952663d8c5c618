//! The OpenVINO engine (`--features openvino`): runs a bundle's ONNX model
//! through OpenVINO's CPU plugin, with `libopenvino_c` loaded at run time.
//!
//! Nothing about OpenVINO is needed to build neorun: the library is looked
//! for when the first OpenVINO bundle is opened, in this order:
//! `OPENVINO_LIB_PATH` (the library file or its folder; when set, nothing
//! else is tried), a pip-installed `openvino` package (`openvino/libs` under
//! the active virtualenv's or the system's site-packages), then the places
//! `openvino-finder` knows (`OPENVINO_INSTALL_DIR`, `INTEL_OPENVINO_DIR`,
//! `LD_LIBRARY_PATH`, the system's library folders). Before the bindings
//! touch it, the library is opened here and checked: it must export every
//! function the bindings call and be OpenVINO 2025.1 or newer.

use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use openvino::{Core, DeviceType, ElementType, RwPropertyKey, Shape};
use tract_core::prelude::*;

/// Oldest OpenVINO the bindings work with (their C API).
pub const MIN_VERSION: (u32, u32) = (2025, 1);

/// Functions of the C API this engine calls (checked before any is called).
const REQUIRED: &[&str] = &[
    "ov_get_openvino_version",
    "ov_version_free",
    "ov_core_create",
    "ov_core_free",
    "ov_core_set_property",
    "ov_core_read_model_from_memory_buffer",
    "ov_core_compile_model",
    "ov_compiled_model_create_infer_request",
    "ov_compiled_model_free",
    "ov_compiled_model_outputs_size",
    "ov_model_free",
    "ov_infer_request_set_input_tensor_by_index",
    "ov_infer_request_get_output_tensor_by_index",
    "ov_infer_request_infer",
    "ov_infer_request_free",
    "ov_tensor_create",
    "ov_tensor_data",
    "ov_tensor_get_shape",
    "ov_tensor_get_element_type",
    "ov_tensor_get_byte_size",
    "ov_tensor_free",
    "ov_shape_create",
    "ov_shape_free",
    "ov_get_last_err_msg",
];

/// The library this process uses, once found and checked.
#[derive(Clone, Debug)]
pub struct Library {
    pub path: PathBuf,
    /// `2026.4.1-…` as the library reports it.
    pub build: String,
    pub version: (u32, u32),
}

static LIBRARY: OnceLock<std::result::Result<Library, String>> = OnceLock::new();

/// What to install when no usable library is found.
pub const INSTALL_HINT: &str = "install OpenVINO's runtime (pip install openvino, in the environment neorun runs from, or Intel's archive/apt packages), or point OPENVINO_LIB_PATH at libopenvino_c.so";

/// Finds, checks and loads `libopenvino_c` (once per process).
pub fn library() -> std::result::Result<&'static Library, String> {
    LIBRARY.get_or_init(load).as_ref().map_err(|e| e.clone())
}

fn load() -> std::result::Result<Library, String> {
    let path = locate()?;
    let lib = check(&path)?;
    openvino_sys::library::load_from(&path)
        .map_err(|e| format!("OpenVINO library {}: {e}\nhint: {INSTALL_HINT}", path.display()))?;
    Ok(lib)
}

/// The candidates, in the documented order.
fn locate() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("OPENVINO_LIB_PATH") {
        let p = PathBuf::from(p);
        return in_place(&p).ok_or_else(|| {
            format!("OPENVINO_LIB_PATH={} holds no libopenvino_c.so\nhint: {INSTALL_HINT}", p.display())
        });
    }
    for site in super::dylib::site_packages().0 {
        if let Some(found) = in_place(&site.join("openvino/libs")) {
            return Ok(found);
        }
    }
    openvino_finder::find("openvino_c", openvino_finder::Linking::Dynamic)
        .ok_or_else(|| format!("the OpenVINO runtime library (libopenvino_c.so) was not found\nhint: {INSTALL_HINT}"))
}

/// `p` itself if it is a file, else the newest `libopenvino_c.so*` in it.
fn in_place(p: &Path) -> Option<PathBuf> {
    super::dylib::in_place(p, "libopenvino_c.so")
}

#[repr(C)]
struct OvVersion {
    build_number: *const c_char,
    description: *const c_char,
}

/// Opens the library, checks its exports and its version.
fn check(path: &Path) -> std::result::Result<Library, String> {
    let bad = |what: String| format!("OpenVINO library {}: {what}\nhint: {INSTALL_HINT}", path.display());
    // SAFETY: loading runs the library's initialisers; it is the library the
    // operator pointed at (or found where OpenVINO installs itself)
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| bad(format!("cannot be loaded: {e}")))?;
    let missing: Vec<&str> =
        REQUIRED.iter().copied().filter(|s| unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err()).collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "is not a compatible OpenVINO C library: it lacks {} (OpenVINO {}.{} or newer is needed)",
            missing.join(", "),
            MIN_VERSION.0,
            MIN_VERSION.1
        )));
    }
    // SAFETY: the signatures of OpenVINO's C API (ov_version_t is two C strings)
    let build = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut OvVersion) -> c_int> =
            lib.get(b"ov_get_openvino_version").map_err(|e| bad(e.to_string()))?;
        let free: libloading::Symbol<unsafe extern "C" fn(*mut OvVersion)> =
            lib.get(b"ov_version_free").map_err(|e| bad(e.to_string()))?;
        let mut v = OvVersion { build_number: std::ptr::null(), description: std::ptr::null() };
        if get(&mut v) != 0 || v.build_number.is_null() {
            return Err(bad("does not report its version".into()));
        }
        let s = CStr::from_ptr(v.build_number).to_string_lossy().into_owned();
        free(&mut v);
        s
    };
    let version = parse_version(&build).ok_or_else(|| bad(format!("reports an unreadable version `{build}`")))?;
    if version < MIN_VERSION {
        return Err(bad(format!(
            "is OpenVINO {}.{} ({build}); neorun needs {}.{} or newer",
            version.0, version.1, MIN_VERSION.0, MIN_VERSION.1
        )));
    }
    // stays loaded for the process: the bindings open it next, and unloading
    // OpenVINO (its TBB threads) between the two is asking for trouble
    std::mem::forget(lib);
    Ok(Library { path: path.to_path_buf(), build, version })
}

/// `2026.4.1-20300-…` → (2026, 4).
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `2026.4.1` from a build number.
pub fn release(build: &str) -> String {
    build.split('-').next().unwrap_or(build).to_string()
}

/// A compiled model and its inference request.
struct Compiled {
    _core: Core,
    _compiled: openvino::CompiledModel,
    request: openvino::InferRequest,
    outputs: usize,
    threads: usize,
    /// Input tensors set on the request, reused while shapes and types stay
    /// (the request keeps a reference to each: refilled in place).
    inputs: Vec<Option<(Vec<usize>, DatumType, openvino::Tensor)>>,
}

/// An ONNX model run by OpenVINO's CPU plugin.
pub struct OvEngine {
    onnx: Vec<u8>,
    /// `f32` or `bf16` (OpenVINO's INFERENCE_PRECISION_HINT).
    precision: &'static str,
    state: Mutex<Compiled>,
}

impl std::fmt::Debug for OvEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OvEngine({})", self.precision)
    }
}

impl OvEngine {
    /// Loads the library (if not yet) and compiles `onnx` for this CPU.
    /// `precision`: `fp32` or `bf16`.
    pub fn new(onnx: &[u8], precision: &str, threads: usize) -> Result<OvEngine> {
        let precision = match precision {
            "fp32" => "f32",
            "bf16" => "bf16",
            other => bail!("OpenVINO engine: precision `{other}` is not one it runs (fp32, bf16)"),
        };
        library().map_err(anyhow::Error::msg)?;
        let state = compile(onnx, precision, threads)?;
        Ok(OvEngine { onnx: onnx.to_vec(), precision, state: Mutex::new(state) })
    }

    /// Recompiles for another thread count (a compile-time property in OpenVINO).
    pub fn set_threads(&self, threads: usize) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.threads != threads {
            *state = compile(&self.onnx, self.precision, threads)?;
        }
        Ok(())
    }

    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        state.inputs.resize_with(inputs.len(), || None);
        for (i, t) in inputs.iter().enumerate() {
            let same = matches!(&state.inputs[i], Some((shape, dt, _)) if shape == t.shape() && *dt == t.datum_type());
            if !same {
                let dims: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
                let ov = openvino::Tensor::new(element_type(t.datum_type())?, &Shape::new(&dims)?)?;
                state.request.set_input_tensor_by_index(i, &ov).with_context(|| format!("setting input {i}"))?;
                state.inputs[i] = Some((t.shape().to_vec(), t.datum_type(), ov));
            }
            let (_, _, ov) = state.inputs[i].as_mut().expect("set above");
            ov.get_raw_data_mut()?.copy_from_slice(t.as_bytes());
        }
        state.request.infer().context("OpenVINO inference")?;
        let mut outputs = Vec::with_capacity(state.outputs);
        for i in 0..state.outputs {
            let ov = state.request.get_output_tensor_by_index(i).with_context(|| format!("reading output {i}"))?;
            let shape: Vec<usize> = ov.get_shape()?.get_dimensions().iter().map(|d| *d as usize).collect();
            let dt = datum_type(ov.get_element_type()?)?;
            // SAFETY: the bytes are `shape` elements of `dt`, as OpenVINO reports them
            outputs.push(unsafe { Tensor::from_raw_dt(dt, &shape, ov.get_raw_data()?)? });
        }
        Ok(outputs)
    }
}

fn compile(onnx: &[u8], precision: &str, threads: usize) -> Result<Compiled> {
    let mut core = Core::new().context("creating the OpenVINO core")?;
    let cpu = DeviceType::CPU;
    let threads_s = threads.max(1).to_string();
    for (k, v) in [
        (RwPropertyKey::HintInferencePrecision, precision),
        (RwPropertyKey::InferenceNumThreads, threads_s.as_str()),
        (RwPropertyKey::NumStreams, "1"),
        (RwPropertyKey::HintPerformanceMode, "LATENCY"),
    ] {
        core.set_property(&cpu, &k, v).with_context(|| format!("setting OpenVINO's {} to {v}", k.as_ref()))?;
    }
    let model = core.read_model_from_buffer(onnx, None).context("OpenVINO could not read the bundle's ONNX model")?;
    let mut compiled = core.compile_model(&model, cpu).context("OpenVINO could not compile the model for this CPU")?;
    let outputs = compiled.get_output_size().context("reading the model's outputs")?;
    let request = compiled.create_infer_request().context("creating an OpenVINO inference request")?;
    Ok(Compiled { _core: core, _compiled: compiled, request, outputs, threads, inputs: vec![] })
}

fn element_type(dt: DatumType) -> Result<ElementType> {
    Ok(match dt {
        DatumType::F32 => ElementType::F32,
        DatumType::F64 => ElementType::F64,
        DatumType::F16 => ElementType::F16,
        DatumType::I64 => ElementType::I64,
        DatumType::I32 => ElementType::I32,
        DatumType::I16 => ElementType::I16,
        DatumType::I8 => ElementType::I8,
        DatumType::U8 => ElementType::U8,
        DatumType::U16 => ElementType::U16,
        DatumType::U32 => ElementType::U32,
        DatumType::U64 => ElementType::U64,
        DatumType::Bool => ElementType::Boolean,
        other => bail!("OpenVINO engine: inputs of type {other:?} are not supported"),
    })
}

fn datum_type(et: ElementType) -> Result<DatumType> {
    Ok(match et {
        ElementType::F32 => DatumType::F32,
        ElementType::F64 => DatumType::F64,
        ElementType::F16 => DatumType::F16,
        ElementType::I64 => DatumType::I64,
        ElementType::I32 => DatumType::I32,
        ElementType::I16 => DatumType::I16,
        ElementType::I8 => DatumType::I8,
        ElementType::U8 => DatumType::U8,
        ElementType::U16 => DatumType::U16,
        ElementType::U32 => DatumType::U32,
        ElementType::U64 => DatumType::U64,
        ElementType::Boolean => DatumType::Bool,
        other => bail!("OpenVINO engine: outputs of type {other} are not supported"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2026.4.1-20300-abc"), Some((2026, 4)));
        assert_eq!(parse_version("2024.6.0"), Some((2024, 6)));
        assert_eq!(parse_version("custom"), None);
        assert_eq!(release("2026.4.1-20300-abc"), "2026.4.1");
    }
}
