//! The onnxruntime engine (`--features onnxruntime`): runs a bundle's ONNX
//! model through onnxruntime's CPU execution provider — or, for a CUDA
//! target's bundle (engine option `execution_provider=cuda`), its CUDA
//! execution provider, which only onnxruntime-gpu's builds have — with
//! `libonnxruntime` loaded at run time through the `ort` crate's dynamic
//! loading.
//!
//! Nothing of onnxruntime is needed to build neorun. The library is looked
//! for when the first onnxruntime bundle is opened, in this order:
//! `ORT_DYLIB_PATH` (the library file or its folder; when set, nothing else
//! is tried), the `onnxruntime` pip package (`onnxruntime/capi` under the
//! active virtualenv's, the user's or the system's site-packages), then the
//! folders in `LD_LIBRARY_PATH` and the system's library folders. Before
//! `ort` touches it, the library is opened here and checked: it must export
//! `OrtGetApiBase` and report onnxruntime [`MIN_VERSION`] or newer.
//!
//! A session is created once per model, with the options the bundle fixes
//! (graph optimization level, inter-op threads, the CPU memory arena) and
//! the intra-op threads the device gives it. `ort` runs a session through
//! `&mut` (its maintainers found onnxruntime's `Run` unsafe to call from
//! several threads at once), so one model answers one request at a time,
//! each on all its intra-op threads, as Triton's onnxruntime backend does
//! per model instance.

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use tract_core::prelude::*;

use crate::codec::BadRequest;

/// Name of the engine in manifests, and the model format it reads.
pub const ENGINE_NAME: &str = "onnxruntime";
pub const MODEL_FORMAT: &str = "onnx";

/// Oldest onnxruntime the bindings work with (C API version 17).
pub const MIN_VERSION: (u32, u32) = (1, 17);

/// What a CUDA bundle needs on the device.
pub const CUDA_HINT: &str = "a CUDA bundle on onnxruntime needs onnxruntime-gpu (pip install onnxruntime-gpu: libonnxruntime_providers_cuda.so beside libonnxruntime.so), the CUDA and cuDNN libraries it was built for, and an NVIDIA driver; or pass --cpu-fallback to run the same model on the CPU";

/// onnxruntime-gpu's CUDA provider library, looked for beside libonnxruntime.
pub const CUDA_PROVIDER: &str = "libonnxruntime_providers_cuda.so";

/// What to install when no usable library is found.
pub const INSTALL_HINT: &str = "install onnxruntime (pip install onnxruntime, in the environment neorun runs from, or the release archive from github.com/microsoft/onnxruntime), or point ORT_DYLIB_PATH at libonnxruntime.so";

/// The library this process uses, once found and checked.
#[derive(Clone, Debug)]
pub struct Library {
    pub path: PathBuf,
    /// `1.31.1`, as the library reports it.
    pub version: String,
    pub parsed: (u32, u32, u32),
}

static LIBRARY: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Finds and checks `libonnxruntime` (once per process): its exports and
/// version, before anything of it runs but its version function.
pub fn library() -> std::result::Result<&'static Library, String> {
    LIBRARY.get_or_init(|| check(&locate()?)).as_ref().map_err(|e| e.clone())
}

/// onnxruntime's environment over the checked library (once per process).
fn environment() -> std::result::Result<&'static ort::environment::Environment, String> {
    let lib = library()?;
    ENVIRONMENT
        .get_or_init(|| {
            let bad = |e: String| format!("onnxruntime library {}: {e}\nhint: {INSTALL_HINT}", lib.path.display());
            crate::guard::guarded(|| {
                ort::init_from(&lib.path)
                    .map_err(|e| e.to_string())?
                    .with_name("neorun")
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(bad)?
            .map_err(bad)
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// The candidates, in the documented order.
fn locate() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return in_place(&p)
            .ok_or_else(|| format!("ORT_DYLIB_PATH={} holds no libonnxruntime.so\nhint: {INSTALL_HINT}", p.display()));
    }
    let (sites, roots) = super::dylib::site_packages();
    for site in &sites {
        if let Some(found) = in_place(&site.join("onnxruntime/capi")) {
            return Ok(found);
        }
    }
    let added = super::dylib::added_site_packages();
    let mut tried: Vec<String> = (added.iter().map(|s| format!("{}/onnxruntime/capi", s.display())))
        .chain(roots.iter().map(|r| format!("{}/python3*/site-packages/onnxruntime/capi", r.display())))
        .collect();
    let mut folders: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    folders.extend(["/usr/local/lib", "/usr/lib", multiarch.as_str(), "/opt/onnxruntime/lib"].map(PathBuf::from));
    for f in &folders {
        if let Some(found) = in_place(f) {
            return Ok(found);
        }
        tried.push(f.display().to_string());
    }
    Err(format!(
        "the onnxruntime library (libonnxruntime.so) was not found (ORT_DYLIB_PATH is not set; looked in {})\nhint: {INSTALL_HINT}",
        tried.join(", ")
    ))
}

/// `p` itself if it is a file, else the newest `libonnxruntime.so*` in it.
fn in_place(p: &Path) -> Option<PathBuf> {
    super::dylib::in_place(p, "libonnxruntime.so")
}

/// onnxruntime's `OrtApiBase`: the two entries every version has.
#[repr(C)]
struct ApiBase {
    get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
    get_version_string: unsafe extern "C" fn() -> *const c_char,
}

/// Opens the library, checks that it is onnxruntime and its version.
fn check(path: &Path) -> std::result::Result<Library, String> {
    let bad = |what: String| format!("onnxruntime library {}: {what}\nhint: {INSTALL_HINT}", path.display());
    // SAFETY: loading runs the library's initialisers; it is the library the
    // operator pointed at (or found where onnxruntime installs itself)
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| bad(format!("cannot be loaded: {e}")))?;
    // SAFETY: `OrtGetApiBase` takes nothing and returns a pointer to a static
    // table whose first two entries are stable across every version
    let version = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ApiBase> = lib
            .get(b"OrtGetApiBase")
            .map_err(|_| bad("is not an onnxruntime library: it does not export OrtGetApiBase".into()))?;
        let base = get();
        if base.is_null() {
            return Err(bad("OrtGetApiBase returned nothing".into()));
        }
        let s = ((*base).get_version_string)();
        if s.is_null() {
            return Err(bad("reports no version".into()));
        }
        CStr::from_ptr(s).to_string_lossy().into_owned()
    };
    let parsed =
        parse_version(&version).ok_or_else(|| bad(format!("reports a version neorun cannot read: `{version}`")))?;
    if (parsed.0, parsed.1) < MIN_VERSION {
        return Err(bad(format!("is onnxruntime {version}; {}.{} or newer is needed", MIN_VERSION.0, MIN_VERSION.1)));
    }
    // kept loaded for the process's life (ort loads it again by path)
    std::mem::forget(lib);
    Ok(Library { path: path.to_path_buf(), version, parsed })
}

/// `1.31.1` → (1, 31, 1); a missing patch is 0.
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.trim().split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// The session options a bundle fixes, with their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// `disable`, `basic`, `extended`, `all`.
    pub graph_optimization_level: String,
    pub inter_op_threads: usize,
    pub memory_arena: bool,
    /// `cpu`, or `cuda` (a CUDA target's bundle: the CUDA execution
    /// provider first, nodes it lacks on the CPU one).
    pub execution_provider: String,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            graph_optimization_level: "all".into(),
            inter_op_threads: 1,
            memory_arena: true,
            execution_provider: "cpu".into(),
        }
    }
}

impl SessionSettings {
    /// As recorded in the manifest (`EngineInfo::options`); the execution
    /// provider only when it is not the CPU's, so a CPU bundle opens on
    /// every neorun with the engine, and a CUDA one is refused by name by
    /// a neorun that predates it.
    pub fn to_options(&self) -> BTreeMap<String, String> {
        let mut o = BTreeMap::from([
            ("graph_optimization_level".to_string(), self.graph_optimization_level.clone()),
            ("inter_op_threads".to_string(), self.inter_op_threads.to_string()),
            ("memory_arena".to_string(), self.memory_arena.to_string()),
        ]);
        if self.execution_provider != "cpu" {
            o.insert("execution_provider".into(), self.execution_provider.clone());
        }
        o
    }

    /// Whether sessions start on the CUDA execution provider.
    pub fn cuda(&self) -> bool {
        self.execution_provider == "cuda"
    }

    /// From the manifest; an unknown key or value is an error naming it.
    pub fn from_options(o: &BTreeMap<String, String>) -> Result<SessionSettings> {
        let mut s = SessionSettings::default();
        for (k, v) in o {
            match k.as_str() {
                "graph_optimization_level" => {
                    if !["disable", "basic", "extended", "all"].contains(&v.as_str()) {
                        bail!("engine option graph_optimization_level=`{v}`: expected disable, basic, extended or all");
                    }
                    s.graph_optimization_level = v.clone();
                }
                "inter_op_threads" => {
                    s.inter_op_threads = v
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .with_context(|| format!("engine option inter_op_threads=`{v}`: expected a count ≥ 1"))?
                }
                "memory_arena" => {
                    s.memory_arena = v
                        .parse()
                        .with_context(|| format!("engine option memory_arena=`{v}`: expected true or false"))?
                }
                "execution_provider" => {
                    if !["cpu", "cuda"].contains(&v.as_str()) {
                        bail!("engine option execution_provider=`{v}`: expected cpu or cuda");
                    }
                    s.execution_provider = v.clone();
                }
                other => bail!("unknown onnxruntime engine option `{other}` (a newer neoc made this bundle?)"),
            }
        }
        Ok(s)
    }
}

/// A model loaded in onnxruntime.
pub struct OrtEngine {
    session: Mutex<Session>,
    bytes: Vec<u8>,
    settings: SessionSettings,
    threads: usize,
    /// Element types of the inputs, in model order.
    inputs: Vec<TensorElementType>,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine").field("settings", &self.settings).field("threads", &self.threads).finish()
    }
}

fn session(bytes: &[u8], s: &SessionSettings, threads: usize) -> Result<Session> {
    let env = environment().map_err(anyhow::Error::msg)?;
    let level = match s.graph_optimization_level.as_str() {
        "disable" => GraphOptimizationLevel::Disable,
        "basic" => GraphOptimizationLevel::Level1,
        "extended" => GraphOptimizationLevel::Level2,
        _ => GraphOptimizationLevel::All,
    };
    let cpu = ort::ep::CPU::default().with_arena_allocator(s.memory_arena).build();
    let mut providers = vec![cpu];
    if s.cuda() {
        let lib = library().map_err(anyhow::Error::msg)?;
        // the CPU wheel has no CUDA provider: say so before onnxruntime does
        let dir = lib.path.parent().unwrap_or(Path::new("."));
        if !dir.join(CUDA_PROVIDER).exists() {
            bail!(
                "onnxruntime's CUDA execution provider is not in {} ({CUDA_PROVIDER} is missing: this is a CPU build of onnxruntime)\nhint: {CUDA_HINT}",
                dir.display()
            );
        }
        // first, and required: a session quietly on the CPU is not what a
        // CUDA bundle promises
        providers.insert(0, ort::ep::CUDA::default().with_device_id(0).build().error_on_failure());
    }
    let e = |e: ort::Error| anyhow::anyhow!("{e}");
    let e_cuda = |x: ort::Error| {
        if s.cuda() {
            anyhow::anyhow!("onnxruntime's CUDA execution provider cannot start here: {x}\nhint: {CUDA_HINT}")
        } else {
            e(x)
        }
    };
    Session::builder(env)
        .map_err(e)?
        // onnxruntime's warnings (unused initializers, old opsets) are not
        // the operator's concern; its errors come back as statuses anyway
        .with_log_level(ort::logging::LogLevel::Error)
        .map_err(|x| e(x.into()))?
        .with_optimization_level(level)
        .map_err(|x| e(x.into()))?
        .with_intra_threads(threads.max(1))
        .map_err(|x| e(x.into()))?
        .with_inter_threads(s.inter_op_threads.max(1))
        .map_err(|x| e(x.into()))?
        .with_execution_providers(providers)
        .map_err(|x| e_cuda(x.into()))?
        .commit_from_memory(bytes)
        .map_err(|x| anyhow::anyhow!("onnxruntime cannot create a session for this model: {x}"))
}

impl OrtEngine {
    pub fn new(bytes: &[u8], settings: SessionSettings, threads: usize) -> Result<OrtEngine> {
        let session = session(bytes, &settings, threads)?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| match i.dtype() {
                ValueType::Tensor { ty, .. } => Ok(*ty),
                other => bail!("input `{}` is {other}, not a tensor: neorun feeds tensors only", i.name()),
            })
            .collect::<Result<Vec<_>>>()?;
        for o in session.outputs() {
            if !matches!(o.dtype(), ValueType::Tensor { .. }) {
                bail!("output `{}` is {}, not a tensor: neorun answers with tensors only", o.name(), o.dtype());
            }
        }
        Ok(OrtEngine { session: Mutex::new(session), bytes: bytes.to_vec(), settings, threads, inputs })
    }

    /// The model's inputs and outputs as the session reads them.
    pub fn signature(&self) -> Result<(Signature, Signature)> {
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let sig = |outlets: &[ort::value::Outlet]| -> Result<Signature> {
            outlets
                .iter()
                .map(|o| match o.dtype() {
                    ValueType::Tensor { ty, shape, .. } => {
                        Ok((o.name().to_string(), *ty, shape.iter().copied().collect()))
                    }
                    other => bail!("`{}` is {other}, not a tensor", o.name()),
                })
                .collect()
        };
        Ok((sig(s.inputs())?, sig(s.outputs())?))
    }

    /// Whether the session runs on the CUDA execution provider.
    pub fn on_cuda(&self) -> bool {
        self.settings.cuda()
    }

    /// A new session with `threads` intra-op threads (sessions fix their pool).
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        if threads != self.threads {
            let s = session(&self.bytes, &self.settings, threads)?;
            self.session = Mutex::new(s);
            self.threads = threads;
        }
        Ok(())
    }

    /// One run; inputs in model order, already checked against the manifest.
    pub fn run(&self, inputs: Vec<Tensor>) -> TractResult<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            bail!("onnxruntime: {} inputs given, the model takes {}", inputs.len(), self.inputs.len());
        }
        // in the element types the model declares: a cast only where they differ
        let cast: Vec<std::borrow::Cow<'_, Tensor>> =
            inputs.iter().zip(&self.inputs).map(|(t, ty)| t.cast_to_dt(datum(*ty)?)).collect::<Result<_>>()?;
        let values: Vec<ort::session::SessionInputValue<'_>> =
            cast.iter().zip(&self.inputs).map(|(t, ty)| view(t, *ty)).collect::<Result<_>>()?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(values.as_slice()).map_err(|e| {
            // shapes or types the model refuses: the caller's fault, a bad
            // request like the manifest's own checks
            if e.code() == ort::ErrorCode::InvalidArgument {
                anyhow::Error::new(BadRequest(format!("onnxruntime refused the request: {e}")))
            } else {
                anyhow::anyhow!("onnxruntime: {e}")
            }
        })?;
        let mut out = Vec::with_capacity(outputs.len());
        for (_, v) in outputs.iter() {
            out.push(to_tensor(&v)?);
        }
        Ok(out)
    }
}

/// `$body` with `$T` the Rust type of onnxruntime's element type `$ty`,
/// for the types neorun carries; `$other` for the rest (strings, bf16, f8…).
#[rustfmt::skip]
macro_rules! with_element_type {
    ($ty:expr, $T:ident => $body:expr, $other:expr) => {
        match $ty {
            TensorElementType::Float32 => { type $T = f32; $body }
            TensorElementType::Float64 => { type $T = f64; $body }
            TensorElementType::Float16 => { type $T = f16; $body }
            TensorElementType::Int64 => { type $T = i64; $body }
            TensorElementType::Int32 => { type $T = i32; $body }
            TensorElementType::Int16 => { type $T = i16; $body }
            TensorElementType::Int8 => { type $T = i8; $body }
            TensorElementType::Uint8 => { type $T = u8; $body }
            TensorElementType::Uint16 => { type $T = u16; $body }
            TensorElementType::Uint32 => { type $T = u32; $body }
            TensorElementType::Uint64 => { type $T = u64; $body }
            TensorElementType::Bool => { type $T = bool; $body }
            _ => $other,
        }
    };
}

/// The tract element type of onnxruntime's `ty`, for the types neorun carries.
fn datum(ty: TensorElementType) -> Result<DatumType> {
    if ty == TensorElementType::String {
        return Ok(DatumType::String);
    }
    with_element_type!(ty, T => Ok(T::datum_type()), bail!("onnxruntime type {ty}: neorun does not carry it"))
}

/// `t`, already of element type `ty`, as an onnxruntime value over the same
/// memory (no copy); strings are copied (onnxruntime keeps its own).
fn view(t: &Tensor, ty: TensorElementType) -> Result<ort::session::SessionInputValue<'_>> {
    let shape: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
    if ty == TensorElementType::String {
        let strings = t.try_as_plain_ram()?.as_slice::<String>()?;
        if let Some(i) = strings.iter().position(|s| s.contains('\0')) {
            bail!(BadRequest(format!("string {i} holds a NUL character, which onnxruntime's strings cannot")));
        }
        return Ok(ort::value::Tensor::from_string_array((shape, strings))
            .map_err(|e| anyhow::anyhow!("onnxruntime input: {e}"))?
            .into());
    }
    with_element_type!(
        ty,
        T => Ok(TensorRef::from_array_view((shape, t.try_as_plain_ram()?.as_slice::<T>()?))
            .map_err(|e| anyhow::anyhow!("onnxruntime input: {e}"))?
            .into()),
        bail!("onnxruntime input of type {ty}: neorun does not feed it")
    )
}

/// An onnxruntime output as a tract tensor (copied out of onnxruntime's memory).
fn to_tensor(v: &ort::value::DynValueRef<'_>) -> Result<Tensor> {
    let ValueType::Tensor { ty, .. } = v.dtype() else { bail!("onnxruntime output is not a tensor") };
    if *ty == TensorElementType::String {
        let (shape, data) = v.try_extract_strings().map_err(|e| anyhow::anyhow!("onnxruntime output: {e}"))?;
        let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
        return crate::tensors::string_tensor(&dims, data);
    }
    with_element_type!(
        *ty,
        T => {
            let (shape, data) = v.try_extract_tensor::<T>().map_err(|e| anyhow::anyhow!("onnxruntime output: {e}"))?;
            let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
            Ok(Tensor::from_shape(&dims, data)?)
        },
        bail!("onnxruntime output of type {ty}: neorun does not answer with it")
    )
}

/// The element type neoc's manifests call `ty` (`f32`, `i64`, …).
pub fn dtype_name(ty: TensorElementType) -> Option<&'static str> {
    datum(ty).ok().and_then(crate::tensors::dtype_name)
}

/// Name, element type and shape (`-1`: free) of a model's inputs and
/// outputs, as onnxruntime reads them.
pub type Signature = Vec<(String, TensorElementType, Vec<i64>)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.31.1"), Some((1, 31, 1)));
        assert_eq!(parse_version("1.17"), Some((1, 17, 0)));
        assert_eq!(parse_version("1.20.0-dev"), Some((1, 20, 0)));
        assert_eq!(parse_version("one"), None);
    }

    #[test]
    fn options_round_trip_and_refuse_unknown() {
        let s = SessionSettings {
            graph_optimization_level: "basic".into(),
            inter_op_threads: 2,
            memory_arena: false,
            execution_provider: "cpu".into(),
        };
        assert_eq!(SessionSettings::from_options(&s.to_options()).unwrap(), s);
        assert!(!s.to_options().contains_key("execution_provider"));
        let cuda = SessionSettings { execution_provider: "cuda".into(), ..s };
        assert_eq!(cuda.to_options()["execution_provider"], "cuda");
        assert!(SessionSettings::from_options(&cuda.to_options()).unwrap().cuda());
        let bad = BTreeMap::from([("execution_provider".to_string(), "tensorrt".to_string())]);
        assert!(format!("{:#}", SessionSettings::from_options(&bad).unwrap_err()).contains("expected cpu or cuda"));
        let bad = BTreeMap::from([("graph_optimization_level".to_string(), "max".to_string())]);
        assert!(format!("{:#}", SessionSettings::from_options(&bad).unwrap_err()).contains("`max`"));
        let bad = BTreeMap::from([("inter_op_threads".to_string(), "0".to_string())]);
        assert!(SessionSettings::from_options(&bad).is_err());
        let bad = BTreeMap::from([("spin".to_string(), "on".to_string())]);
        assert!(format!("{:#}", SessionSettings::from_options(&bad).unwrap_err()).contains("`spin`"));
    }
}
