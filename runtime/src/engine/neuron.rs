//! The AWS Neuron engine (`--features neuron`, on by default): runs the NEFF
//! that `neoc compile --target ml_inf2` packed into a bundle on an
//! Inferentia2 NeuronCore, through the Neuron runtime library (`libnrt`),
//! loaded at run time.
//!
//! Nothing about Neuron is needed to build neorun. The library is looked for
//! when the first Neuron bundle is opened: `NEORUN_NRT_LIB` (the library file;
//! when set, nothing else is tried), then `/opt/aws/neuron/lib/libnrt.so.1`
//! (where the `aws-neuronx-runtime-lib` package puts it), then `libnrt.so.1`
//! through the dynamic loader's own search (`LD_LIBRARY_PATH`, ld.so.cache).
//! Before anything is called, the library must export every function used
//! here and report runtime major version 2 (`nrt_get_version`).
//!
//! The calls follow the Neuron runtime's C API (`nrt.h`,
//! `nrt_experimental.h`): `nrt_init(NO_FW)` once per process, `nrt_load` of
//! the NEFF bytes on the first free NeuronCores, the model's tensor info
//! (names, sizes, dtypes, shapes) matched against the manifest's inputs and
//! outputs, one device tensor per input and output written, executed and
//! read back per run.
//!
//! Run on Inferentia hardware: never (none was available). The tests drive
//! this code against a stand-in `libnrt` (tests/neuron/standin-libnrt.c)
//! that implements the same C interface on the CPU.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Result};
use tract_core::prelude::*;

/// What to install when no usable library is found.
pub const INSTALL_HINT: &str = "install the Neuron runtime on this Inferentia host (apt/dnf install aws-neuronx-runtime-lib aws-neuronx-dkms), or point NEORUN_NRT_LIB at libnrt.so";

const NRT_FRAMEWORK_TYPE_NO_FW: c_int = 1;
const NRT_TENSOR_PLACEMENT_DEVICE: c_int = 0;
const NRT_TENSOR_USAGE_INPUT: c_int = 0;
const NRT_TENSOR_USAGE_OUTPUT: c_int = 1;
const NRT_TENSOR_NAME_MAX: usize = 256;

#[repr(C)]
struct NrtVersion {
    major: u64,
    minor: u64,
    patch: u64,
    maintenance: u64,
    detail: [c_char; 128],
    git_hash: [c_char; 64],
}

#[repr(C)]
struct TensorInfo {
    name: [c_char; NRT_TENSOR_NAME_MAX],
    usage: c_int,
    size: usize,
    dtype: c_int,
    shape: *const u32,
    ndim: u32,
}

#[repr(C)]
struct TensorInfoArray {
    count: u64,
    // followed by `count` TensorInfo (a C flexible array member)
    first: [TensorInfo; 0],
}

type Status = c_int;

/// The functions used, resolved once.
struct Api {
    get_version: unsafe extern "C" fn(*mut NrtVersion, usize) -> Status,
    init: unsafe extern "C" fn(c_int, *const c_char, *const c_char) -> Status,
    load: unsafe extern "C" fn(*const c_void, usize, i32, i32, *mut *mut c_void) -> Status,
    unload: unsafe extern "C" fn(*mut c_void) -> Status,
    tensor_info: unsafe extern "C" fn(*mut c_void, *mut *mut TensorInfoArray) -> Status,
    free_tensor_info: unsafe extern "C" fn(*mut TensorInfoArray) -> Status,
    allocate_set: unsafe extern "C" fn(*mut *mut c_void) -> Status,
    destroy_set: unsafe extern "C" fn(*mut *mut c_void),
    add_to_set: unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_void) -> Status,
    tensor_allocate: unsafe extern "C" fn(c_int, c_int, usize, *const c_char, *mut *mut c_void) -> Status,
    tensor_free: unsafe extern "C" fn(*mut *mut c_void),
    tensor_write: unsafe extern "C" fn(*mut c_void, *const c_void, usize, usize) -> Status,
    tensor_read: unsafe extern "C" fn(*const c_void, *mut c_void, usize, usize) -> Status,
    execute: unsafe extern "C" fn(*mut c_void, *const c_void, *mut c_void) -> Status,
}

/// Names of the functions in `Api`, in its order (checked before any call).
pub const REQUIRED: &[&str] = &[
    "nrt_get_version",
    "nrt_init",
    "nrt_load",
    "nrt_unload",
    "nrt_get_model_tensor_info",
    "nrt_free_model_tensor_info",
    "nrt_allocate_tensor_set",
    "nrt_destroy_tensor_set",
    "nrt_add_tensor_to_tensor_set",
    "nrt_tensor_allocate",
    "nrt_tensor_free",
    "nrt_tensor_write",
    "nrt_tensor_read",
    "nrt_execute",
];

/// The Neuron runtime this process uses, found, checked and initialised.
pub struct Runtime {
    pub path: PathBuf,
    /// `2.x.y` as the library reports it.
    pub version: String,
    api: Api,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// Finds, checks, loads and initialises `libnrt` (once per process).
pub fn runtime() -> std::result::Result<&'static Runtime, String> {
    RUNTIME.get_or_init(|| open().and_then(init)).as_ref().map_err(|e| e.clone())
}

/// Finds and checks `libnrt` without starting it (no device is touched):
/// its path and version, or why it cannot be used.
pub fn probe() -> std::result::Result<(PathBuf, String), String> {
    open().map(|r| (r.path, r.version))
}

/// The status codes of `nrt_status.h`, by name.
pub fn status_name(s: Status) -> &'static str {
    match s {
        0 => "NRT_SUCCESS",
        1 => "NRT_FAILURE",
        2 => "NRT_INVALID",
        3 => "NRT_INVALID_HANDLE",
        4 => "NRT_RESOURCE",
        5 => "NRT_TIMEOUT",
        6 => "NRT_HW_ERROR",
        7 => "NRT_QUEUE_FULL",
        9 => "NRT_LOAD_NOT_ENOUGH_NC",
        10 => "NRT_UNSUPPORTED_NEFF_VERSION",
        11 => "NRT_FAIL_HOST_MEM_ALLOC",
        13 => "NRT_UNINITIALIZED",
        14 => "NRT_CLOSED",
        101 => "NRT_EXEC_UNIT_UNRECOVERABLE",
        1002 => "NRT_EXEC_BAD_INPUT",
        1003 => "NRT_EXEC_COMPLETED_WITH_NUM_ERR",
        1004 => "NRT_EXEC_COMPLETED_WITH_ERR",
        1005 => "NRT_EXEC_NC_BUSY",
        1006 => "NRT_EXEC_OOB",
        _ => "an unknown status",
    }
}

fn ok(what: &str, s: Status) -> Result<()> {
    if s != 0 {
        bail!("{what} failed: {} ({s})", status_name(s));
    }
    Ok(())
}

fn candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("NEORUN_NRT_LIB") {
        return vec![PathBuf::from(p)];
    }
    let mut c = vec![PathBuf::from("/opt/aws/neuron/lib/libnrt.so.1"), PathBuf::from("/opt/aws/neuron/lib/libnrt.so")];
    // a bare name: the dynamic loader searches LD_LIBRARY_PATH and its cache
    c.push(PathBuf::from("libnrt.so.1"));
    c
}

fn open() -> std::result::Result<Runtime, String> {
    let explicit = std::env::var_os("NEORUN_NRT_LIB").is_some();
    let mut tried = Vec::new();
    for path in candidates() {
        let bare = path.components().count() == 1;
        if !bare && !path.is_file() {
            tried.push(format!("{} (no such file)", path.display()));
            continue;
        }
        // SAFETY: loading runs the library's initialisers; it is the library
        // the operator installed (or named) for this purpose.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => return check(&path, lib),
            Err(e) if explicit => {
                return Err(format!("NEORUN_NRT_LIB={}: cannot be loaded: {e}\nhint: {INSTALL_HINT}", path.display()))
            }
            Err(_) => tried.push(format!("{} (not found by the loader)", path.display())),
        }
    }
    if explicit {
        let p = PathBuf::from(std::env::var_os("NEORUN_NRT_LIB").expect("explicit"));
        return Err(format!("NEORUN_NRT_LIB={} names no file\nhint: {INSTALL_HINT}", p.display()));
    }
    Err(format!("the Neuron runtime library (libnrt) was not found; tried {}\nhint: {INSTALL_HINT}", tried.join(", ")))
}

fn check(path: &Path, lib: libloading::Library) -> std::result::Result<Runtime, String> {
    let bad = |what: String| format!("Neuron runtime library {}: {what}\nhint: {INSTALL_HINT}", path.display());
    let missing: Vec<&str> =
        REQUIRED.iter().copied().filter(|name| unsafe { lib.get::<*const c_void>(name.as_bytes()) }.is_err()).collect();
    if !missing.is_empty() {
        return Err(bad(format!("does not export {} (not a Neuron runtime 2.x library?)", missing.join(", "))));
    }
    // SAFETY: every symbol exists (checked above) and has the C signature
    // of nrt.h / nrt_experimental.h written in `Api`; the library is leaked
    // below so the pointers stay valid for the life of the process.
    let api = unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get($name.as_bytes()).expect("checked")
            };
        }
        Api {
            get_version: sym!("nrt_get_version"),
            init: sym!("nrt_init"),
            load: sym!("nrt_load"),
            unload: sym!("nrt_unload"),
            tensor_info: sym!("nrt_get_model_tensor_info"),
            free_tensor_info: sym!("nrt_free_model_tensor_info"),
            allocate_set: sym!("nrt_allocate_tensor_set"),
            destroy_set: sym!("nrt_destroy_tensor_set"),
            add_to_set: sym!("nrt_add_tensor_to_tensor_set"),
            tensor_allocate: sym!("nrt_tensor_allocate"),
            tensor_free: sym!("nrt_tensor_free"),
            tensor_write: sym!("nrt_tensor_write"),
            tensor_read: sym!("nrt_tensor_read"),
            execute: sym!("nrt_execute"),
        }
    };
    std::mem::forget(lib);
    let mut v: NrtVersion = unsafe { std::mem::zeroed() };
    let s = unsafe { (api.get_version)(&mut v, std::mem::size_of::<NrtVersion>()) };
    if s != 0 {
        return Err(bad(format!("nrt_get_version failed: {} ({s})", status_name(s))));
    }
    let version = format!("{}.{}.{}", v.major, v.minor, v.patch);
    if v.major != 2 {
        return Err(bad(format!("is Neuron runtime {version}; this neorun speaks runtime API 2.x")));
    }
    Ok(Runtime { path: path.to_path_buf(), version, api })
}

/// `nrt_init`, once per process, before any other call.
fn init(rt: Runtime) -> std::result::Result<Runtime, String> {
    let empty = c"";
    let s = unsafe { (rt.api.init)(NRT_FRAMEWORK_TYPE_NO_FW, empty.as_ptr(), empty.as_ptr()) };
    if s != 0 {
        return Err(format!(
            "the Neuron runtime ({}, {}) could not start: nrt_init failed: {} ({s})\nhint: is this an Inferentia host with the Neuron driver loaded (aws-neuronx-dkms; /dev/neuron0)? Are the NeuronCores free (NEURON_RT_VISIBLE_CORES, other processes: neuron-top)?",
            rt.path.display(),
            rt.version,
            status_name(s)
        ));
    }
    Ok(rt)
}

/// One input or output of the loaded NEFF.
struct Slot {
    name: String,
    tensor: *mut c_void,
    size: usize,
    dt: DatumType,
    shape: Vec<usize>,
}

struct Loaded {
    model: *mut c_void,
    inputs: Vec<Slot>,
    outputs: Vec<Slot>,
    in_set: *mut c_void,
    out_set: *mut c_void,
}

/// A NEFF loaded on NeuronCores, with its device tensors. Runs are serialised:
/// the tensors are shared.
pub struct NeuronEngine {
    rt: &'static Runtime,
    loaded: Mutex<Loaded>,
}

// SAFETY: the raw handles are only used under the mutex, and libnrt's
// handles are not tied to the thread that created them.
unsafe impl Send for NeuronEngine {}
unsafe impl Sync for NeuronEngine {}

impl std::fmt::Debug for NeuronEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NeuronEngine({})", self.rt.path.display())
    }
}

fn dtype(code: c_int) -> Option<DatumType> {
    Some(match code {
        1 => f32::datum_type(),
        2 => f16::datum_type(),
        4 => i8::datum_type(),
        5 => u8::datum_type(),
        6 => i16::datum_type(),
        7 => u16::datum_type(),
        8 => i32::datum_type(),
        9 => u32::datum_type(),
        10 => i64::datum_type(),
        11 => u64::datum_type(),
        _ => return None,
    })
}

/// An input or output the bundle's manifest declares: name and dtype.
pub struct Declared<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
}

impl NeuronEngine {
    /// Loads `neff` and matches its tensors with the manifest's, by name.
    pub fn new(neff: &[u8], inputs: &[Declared], outputs: &[Declared]) -> Result<NeuronEngine> {
        let rt = runtime().map_err(|e| anyhow::anyhow!(e))?;
        let api = &rt.api;
        let mut model: *mut c_void = std::ptr::null_mut();
        ok("nrt_load (the NEFF)", unsafe { (api.load)(neff.as_ptr().cast(), neff.len(), -1, -1, &mut model) })?;
        let mut loaded = Loaded {
            model,
            inputs: vec![],
            outputs: vec![],
            in_set: std::ptr::null_mut(),
            out_set: std::ptr::null_mut(),
        };
        // from here on `loaded` owns what was created: dropped on error
        let mut engine_err = || -> Result<()> {
            let mut info: *mut TensorInfoArray = std::ptr::null_mut();
            ok("nrt_get_model_tensor_info", unsafe { (api.tensor_info)(model, &mut info) })?;
            let infos = unsafe {
                let n = (*info).count as usize;
                let first = std::ptr::addr_of!((*info).first).cast::<TensorInfo>();
                std::slice::from_raw_parts(first, n)
            };
            let described: Vec<(String, c_int, usize, c_int, Vec<usize>)> = infos
                .iter()
                .map(|t| {
                    let name = unsafe { CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy().into_owned();
                    let shape = if t.shape.is_null() {
                        vec![]
                    } else {
                        unsafe { std::slice::from_raw_parts(t.shape, t.ndim as usize) }
                            .iter()
                            .map(|d| *d as usize)
                            .collect()
                    };
                    (name, t.usage, t.size, t.dtype, shape)
                })
                .collect();
            unsafe { (api.free_tensor_info)(info) };
            ok("nrt_allocate_tensor_set", unsafe { (api.allocate_set)(&mut loaded.in_set) })?;
            ok("nrt_allocate_tensor_set", unsafe { (api.allocate_set)(&mut loaded.out_set) })?;
            for (usage, declared, kind) in
                [(NRT_TENSOR_USAGE_INPUT, inputs, "input"), (NRT_TENSOR_USAGE_OUTPUT, outputs, "output")]
            {
                let theirs: Vec<&(String, c_int, usize, c_int, Vec<usize>)> =
                    described.iter().filter(|d| d.1 == usage).collect();
                if theirs.len() != declared.len() {
                    bail!(
                        "the NEFF has {} {kind}s ({}), the bundle's manifest {} ({})",
                        theirs.len(),
                        theirs.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(", "),
                        declared.len(),
                        declared.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
                    );
                }
                for want in declared {
                    let Some((name, _, size, code, shape)) = theirs.iter().find(|d| d.0 == want.name).copied() else {
                        bail!(
                            "the NEFF has no {kind} `{}` (its {kind}s: {})",
                            want.name,
                            theirs.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(", ")
                        );
                    };
                    let dt = dtype(*code).ok_or_else(|| {
                        anyhow::anyhow!(
                            "the NEFF's {kind} `{name}` has dtype code {code}, which neorun cannot exchange"
                        )
                    })?;
                    if crate::tensors::dtype_name(dt) != Some(want.dtype) {
                        bail!("the NEFF's {kind} `{name}` is {dt:?}, the manifest says {}", want.dtype);
                    }
                    if shape.iter().product::<usize>() * dt.size_of() != *size {
                        bail!("the NEFF's {kind} `{name}`: {size} bytes do not hold shape {shape:?} of {dt:?}");
                    }
                    let cname = CString::new(name.as_str())?;
                    let mut tensor: *mut c_void = std::ptr::null_mut();
                    ok(&format!("nrt_tensor_allocate ({kind} `{name}`)"), unsafe {
                        (api.tensor_allocate)(NRT_TENSOR_PLACEMENT_DEVICE, 0, *size, cname.as_ptr(), &mut tensor)
                    })?;
                    let slot = Slot { name: name.clone(), tensor, size: *size, dt, shape: shape.clone() };
                    let set = if usage == NRT_TENSOR_USAGE_INPUT { loaded.in_set } else { loaded.out_set };
                    if usage == NRT_TENSOR_USAGE_INPUT {
                        loaded.inputs.push(slot)
                    } else {
                        loaded.outputs.push(slot)
                    }
                    ok("nrt_add_tensor_to_tensor_set", unsafe { (api.add_to_set)(set, cname.as_ptr(), tensor) })?;
                }
            }
            Ok(())
        };
        let r = engine_err();
        let engine = NeuronEngine { rt, loaded: Mutex::new(loaded) };
        r.map(|_| engine)
    }

    pub fn runtime_version(&self) -> &str {
        &self.rt.version
    }

    /// One execution when the inputs have the NEFF's shapes; one per row when
    /// the NEFF takes one row and the request has several.
    pub fn run(&self, inputs: Vec<Tensor>) -> TractResult<Vec<Tensor>> {
        let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let exact = inputs.iter().zip(&loaded.inputs).all(|(t, s)| t.shape() == s.shape.as_slice());
        if exact {
            return self.execute(&loaded, &inputs);
        }
        let rows = inputs.first().map(|t| t.shape().first().copied().unwrap_or(0)).unwrap_or(0);
        let per_row = loaded.inputs.iter().zip(&inputs).all(|(s, t)| {
            s.shape.first() == Some(&1)
                && t.rank() == s.shape.len()
                && t.shape()[0] == rows
                && t.shape()[1..] == s.shape[1..]
        });
        if !per_row || rows == 0 {
            let want: Vec<String> = loaded.inputs.iter().map(|s| format!("`{}` {:?}", s.name, s.shape)).collect();
            bail!(
                "the NEFF was compiled for fixed input shapes ({}); got {:?}",
                want.join(", "),
                inputs.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>()
            );
        }
        let mut outs: Vec<Vec<Tensor>> = Vec::with_capacity(rows);
        for r in 0..rows {
            let row: Vec<Tensor> = inputs.iter().map(|t| t.slice(0, r, r + 1)).collect::<TractResult<_>>()?;
            outs.push(self.execute(&loaded, &row)?);
        }
        (0..loaded.outputs.len())
            .map(|o| Tensor::stack_tensors(0, &outs.iter().map(|r| &r[o]).collect::<Vec<_>>()))
            .collect()
    }

    fn execute(&self, l: &Loaded, inputs: &[Tensor]) -> TractResult<Vec<Tensor>> {
        let api = &self.rt.api;
        for (t, s) in inputs.iter().zip(&l.inputs) {
            let t = t.cast_to_dt(s.dt)?;
            let view = t.try_as_plain_ram()?;
            let bytes = view.as_bytes();
            if bytes.len() != s.size {
                bail!("input `{}`: {} bytes, the NEFF takes {}", s.name, bytes.len(), s.size);
            }
            ok(&format!("nrt_tensor_write (input `{}`)", s.name), unsafe {
                (api.tensor_write)(s.tensor, bytes.as_ptr().cast(), 0, bytes.len())
            })?;
        }
        ok("nrt_execute", unsafe { (api.execute)(l.model, l.in_set, l.out_set) })?;
        l.outputs
            .iter()
            .map(|s| {
                let mut t = Tensor::zero_dt(s.dt, &s.shape)?;
                let mut view = t.try_as_plain_ram_mut()?;
                let bytes = view.as_bytes_mut();
                ok(&format!("nrt_tensor_read (output `{}`)", s.name), unsafe {
                    (api.tensor_read)(s.tensor, bytes.as_mut_ptr().cast(), 0, s.size)
                })?;
                Ok(t)
            })
            .collect()
    }
}

impl Drop for NeuronEngine {
    fn drop(&mut self) {
        let api = &self.rt.api;
        let l = self.loaded.get_mut().unwrap_or_else(|p| p.into_inner());
        unsafe {
            for s in l.inputs.iter_mut().chain(l.outputs.iter_mut()) {
                (api.tensor_free)(&mut s.tensor);
            }
            if !l.in_set.is_null() {
                (api.destroy_set)(&mut l.in_set);
            }
            if !l.out_set.is_null() {
                (api.destroy_set)(&mut l.out_set);
            }
            if !l.model.is_null() {
                (api.unload)(l.model);
            }
        }
    }
}
