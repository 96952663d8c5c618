//! The neoc target catalog and host detection.
//!
//! A target is data: a name, the Rust/LLVM triple of the device, its
//! architecture, the CPU features a bundle built for it may assume, and its
//! accelerator. Device presets follow SageMaker Neo's names (`ml_c5`,
//! `rasp4b`, …); generic targets exist for each architecture. This crate does
//! no I/O beyond asking the CPU which features it has ([`Host::detect`]).
//!
//! (Over 600 lines by a few: `CATALOG` is data, one entry per target, and
//! host detection sits next to it on purpose, as the only place that asks the
//! CPU anything.)

use std::fmt;

use serde::Serialize;

/// CPU architecture of a target or host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
    Armv7,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "armv7",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            "armv7" => Some(Arch::Armv7),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accelerator a target computes on, besides its CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Accelerator {
    None,
    /// An NVIDIA GPU of this compute capability (`sm` 80 = 8.0), through
    /// tract's CUDA runtime.
    Cuda {
        sm: u32,
    },
    /// An AWS Inferentia/Trainium NeuronCore, through the Neuron SDK.
    Neuron {
        chip: &'static str,
    },
}

impl Accelerator {
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::None => "none",
            Accelerator::Cuda { .. } => "cuda",
            Accelerator::Neuron { .. } => "neuron",
        }
    }

    /// The accelerator's generation: `sm_87`, `inferentia2`.
    pub fn arch(self) -> Option<String> {
        match self {
            Accelerator::None => None,
            Accelerator::Cuda { sm } => Some(format!("sm_{sm}")),
            Accelerator::Neuron { chip } => Some(chip.to_string()),
        }
    }
}

/// The float precision a bundle computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Fp16,
    /// bfloat16: fp32's range with 8 bits of mantissa; OpenVINO on CPUs with
    /// AMX or AVX-512-BF16.
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "fp32" | "f32" => Some(Precision::Fp32),
            "fp16" | "f16" => Some(Precision::Fp16),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine a bundle's model can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// tract: pure Rust, every architecture; fp32 and fp16.
    Tract,
    /// OpenVINO's CPU plugin, x86-64 only, loaded at run time; fp32 and bf16.
    Openvino,
    /// onnxruntime's CPU execution provider, x86-64 and aarch64, loaded at
    /// run time; fp32 (the ONNX model as exported, any opset it runs).
    Onnxruntime,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::Openvino => "openvino",
            EngineKind::Onnxruntime => "onnxruntime",
        }
    }

    pub fn parse(s: &str) -> Option<EngineKind> {
        match s {
            "tract" => Some(EngineKind::Tract),
            "openvino" => Some(EngineKind::Openvino),
            "onnxruntime" => Some(EngineKind::Onnxruntime),
            _ => None,
        }
    }

    /// Whether the engine takes the source ONNX model as is (and needs
    /// tract's fp32 model as its reference and fallback).
    pub fn runs_onnx(self) -> bool {
        matches!(self, EngineKind::Openvino | EngineKind::Onnxruntime)
    }

    /// The precisions this engine computes in.
    pub fn precisions(self) -> &'static [Precision] {
        match self {
            EngineKind::Tract => &[Precision::Fp32, Precision::Fp16],
            EngineKind::Openvino => &[Precision::Fp32, Precision::Bf16],
            EngineKind::Onnxruntime => &[Precision::Fp32],
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The name given to `--target` and recorded in bundles.
    pub name: &'static str,
    /// Rust/LLVM triple of the device's userland.
    pub triple: &'static str,
    pub arch: Arch,
    /// CPU features a bundle for this target may assume; the runtime checks
    /// each of them on the host before loading the bundle.
    pub features: &'static [&'static str],
    pub accelerator: Accelerator,
    /// Precisions the target computes natively. fp16 only where the CPU has
    /// fp16 arithmetic (ARMv8.2 FP16): elsewhere tract emulates it, about
    /// 1000x slower than fp32 (FIELD-NOTES).
    pub precisions: &'static [Precision],
    /// What `neoc compile` uses without `--precision`.
    pub default_precision: Precision,
    /// Engines the device is expected to have, in order of preference (used
    /// as is when the build host cannot run the target and time them).
    pub engines: &'static [EngineKind],
    /// Inference threads a device of this kind should use by default (its
    /// cores); `None`: as many as the host has.
    pub threads: Option<u32>,
    /// The Neo device or instance family this preset stands for, if any.
    pub device: Option<&'static str>,
    pub description: &'static str,
}

impl Target {
    pub fn supports(&self, p: Precision) -> bool {
        self.precisions.contains(&p)
    }
}

const FP32: &[Precision] = &[Precision::Fp32];
const FP32_FP16: &[Precision] = &[Precision::Fp32, Precision::Fp16];
const FP32_BF16: &[Precision] = &[Precision::Fp32, Precision::Bf16];
const TRACT: &[EngineKind] = &[EngineKind::Tract];
/// x86-64 CPU targets with OpenVINO first.
const OPENVINO_TRACT: &[EngineKind] = &[EngineKind::Openvino, EngineKind::Tract, EngineKind::Onnxruntime];
/// CPU targets onnxruntime ships for (x86-64 and aarch64 wheels): tract
/// first, onnxruntime where it is measured faster (or tract cannot run the
/// model). CUDA targets too: tract's CUDA runtime first, onnxruntime's CUDA
/// execution provider (onnxruntime-gpu on the device) where tract cannot
/// run the model or `--engine onnxruntime` asks for it.
const TRACT_ORT: &[EngineKind] = &[EngineKind::Tract, EngineKind::Onnxruntime];

const X86_64_AVX512: &[&str] = &["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"];
const X86_64_AVX512_BF16: &[&str] = &["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512bf16"];
const X86_64_AMX: &[&str] =
    &["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512bf16", "amx-tile", "amx-bf16"];
const X86_64_AVX2: &[&str] = &["sse4.2", "avx", "avx2", "fma"];

/// Every target neoc knows, in the order `neoc targets` lists them.
pub static CATALOG: &[Target] = &[
    Target {
        name: "x86_64",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: &[],
        accelerator: Accelerator::None,
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT_ORT,
        threads: None,
        device: None,
        description: "any x86-64 Linux machine (baseline SSE2; kernels pick wider SIMD at run time)",
    },
    Target {
        name: "x86_64-avx512",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AVX512,
        accelerator: Accelerator::None,
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: OPENVINO_TRACT,
        threads: None,
        device: None,
        description: "x86-64 with AVX-512 (Skylake-SP and later Xeons, Zen 4)",
    },
    Target {
        name: "aarch64",
        triple: "aarch64-unknown-linux-gnu",
        arch: Arch::Aarch64,
        features: &["neon"],
        accelerator: Accelerator::None,
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT_ORT,
        threads: None,
        device: None,
        description: "any 64-bit ARM Linux device (ARMv8-A with NEON)",
    },
    Target {
        name: "armv7",
        triple: "armv7-unknown-linux-gnueabihf",
        arch: Arch::Armv7,
        features: &["neon"],
        accelerator: Accelerator::None,
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT,
        threads: None,
        device: None,
        description: "32-bit ARM Linux device (ARMv7-A, hard float, NEON)",
    },
    Target {
        name: "ml_c5",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AVX512,
        accelerator: Accelerator::None,
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: OPENVINO_TRACT,
        threads: None,
        device: Some("Amazon EC2 C5 (Intel Xeon Platinum, Skylake-SP / Cascade Lake)"),
        description: "SageMaker ml.c5 instances",
    },
    Target {
        name: "x86_64-avx512-bf16",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AVX512_BF16,
        accelerator: Accelerator::None,
        precisions: FP32_BF16,
        default_precision: Precision::Fp32,
        engines: OPENVINO_TRACT,
        threads: None,
        device: None,
        description: "x86-64 with AVX-512-BF16 but no AMX (Intel Cooper Lake, AMD Zen 4 and later): OpenVINO in bf16 where verification allows",
    },
    Target {
        name: "x86_64-amx",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AMX,
        accelerator: Accelerator::None,
        precisions: FP32_BF16,
        default_precision: Precision::Fp32,
        engines: OPENVINO_TRACT,
        threads: None,
        device: None,
        description: "x86-64 with AMX and AVX-512-BF16 (Intel Xeon Sapphire Rapids and later): OpenVINO in bf16 where verification allows",
    },
    Target {
        name: "ml_c7i",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AMX,
        accelerator: Accelerator::None,
        precisions: FP32_BF16,
        default_precision: Precision::Fp32,
        engines: OPENVINO_TRACT,
        threads: None,
        device: Some("Amazon EC2 C7i (Intel Xeon Sapphire Rapids, AMX)"),
        description: "SageMaker ml.c7i instances",
    },
    Target {
        name: "ml_m7i",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AMX,
        accelerator: Accelerator::None,
        precisions: FP32_BF16,
        default_precision: Precision::Fp32,
        engines: OPENVINO_TRACT,
        threads: None,
        device: Some("Amazon EC2 M7i (Intel Xeon Sapphire Rapids, AMX)"),
        description: "SageMaker ml.m7i instances",
    },
    Target {
        name: "ml_m6g",
        triple: "aarch64-unknown-linux-gnu",
        arch: Arch::Aarch64,
        features: &["neon", "fp16"],
        accelerator: Accelerator::None,
        precisions: FP32_FP16,
        default_precision: Precision::Fp16,
        engines: TRACT_ORT,
        threads: None,
        device: Some("Amazon EC2 M6g (AWS Graviton2, Neoverse N1)"),
        description: "SageMaker ml.m6g instances",
    },
    Target {
        name: "rasp4b",
        triple: "aarch64-unknown-linux-gnu",
        arch: Arch::Aarch64,
        features: &["neon"],
        accelerator: Accelerator::None,
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT_ORT,
        threads: Some(4),
        device: Some("Raspberry Pi 4 Model B (Cortex-A72), 64-bit OS"),
        description: "Raspberry Pi 4B running a 64-bit Linux",
    },
    Target {
        name: "jetson_orin",
        triple: "aarch64-unknown-linux-gnu",
        arch: Arch::Aarch64,
        features: &["neon", "fp16"],
        accelerator: Accelerator::Cuda { sm: 87 },
        precisions: FP32_FP16,
        default_precision: Precision::Fp16,
        engines: TRACT_ORT,
        threads: Some(8),
        device: Some("NVIDIA Jetson Orin (Ampere GPU sm_87, Cortex-A78AE CPU cores)"),
        description: "Jetson Orin: the model on its Ampere GPU through tract's CUDA runtime, the CPU model (fp16 on the A78AE cores) as fallback",
    },
    Target {
        name: "jetson_orin_cpu",
        triple: "aarch64-unknown-linux-gnu",
        arch: Arch::Aarch64,
        features: &["neon", "fp16"],
        accelerator: Accelerator::None,
        precisions: FP32_FP16,
        default_precision: Precision::Fp16,
        engines: TRACT_ORT,
        threads: Some(8),
        device: Some("NVIDIA Jetson Orin (Cortex-A78AE CPU cores)"),
        description: "Jetson Orin, CPU cores only (a neorun without CUDA)",
    },
    Target {
        name: "ml_g5",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AVX2,
        accelerator: Accelerator::Cuda { sm: 86 },
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT_ORT,
        threads: None,
        device: Some("Amazon EC2 G5 (NVIDIA A10G, AMD EPYC 7R32)"),
        description: "SageMaker ml.g5 instances: the model on the A10G GPU, the CPU model as fallback",
    },
    Target {
        name: "cuda-sm80",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: &[],
        accelerator: Accelerator::Cuda { sm: 80 },
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT_ORT,
        threads: None,
        device: None,
        description: "any x86-64 Linux machine with an NVIDIA GPU of compute capability 8.0 or newer (A100, H100)",
    },
    Target {
        name: "ml_inf2",
        triple: "x86_64-unknown-linux-gnu",
        arch: Arch::X86_64,
        features: X86_64_AVX2,
        accelerator: Accelerator::Neuron { chip: "inferentia2" },
        precisions: FP32,
        default_precision: Precision::Fp32,
        engines: TRACT,
        threads: None,
        device: Some("Amazon EC2 Inf2 (AWS Inferentia2, AMD EPYC 7R13)"),
        description: "SageMaker ml.inf2 instances: a NEFF compiled by neuronx-cc, the CPU model as fallback",
    },
];

/// Why a target name could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("unknown target `{name}`; known targets: {}, or `host` for this machine", known.join(", "))]
    Unknown { name: String, known: Vec<&'static str> },
}

/// Finds a target by name. `host` names the generic target of the machine
/// this runs on (`x86_64`, `aarch64` or `armv7`).
pub fn lookup(name: &str) -> Result<&'static Target, LookupError> {
    let name = if name == "host" { Host::detect().arch.as_str() } else { name };
    CATALOG
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| LookupError::Unknown { name: name.to_string(), known: CATALOG.iter().map(|t| t.name).collect() })
}

/// The machine the current process runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Host {
    pub arch: Arch,
    /// Features detected at run time, in the catalog's spelling.
    pub features: Vec<&'static str>,
}

/// Why a bundle built for some target cannot run on this host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Incompatible {
    #[error("bundle was compiled for {target} ({built_arch}), this host is {host_arch}")]
    Arch { target: String, built_arch: String, host_arch: String },
    #[error(
        "bundle was compiled for {target}, which assumes CPU features this host lacks: {}; this host is {host_arch} with [{}]",
        missing.join(", "), host_features.join(", ")
    )]
    Features { target: String, missing: Vec<String>, host_arch: String, host_features: Vec<String> },
}

impl Host {
    /// Detects the current host. Only this function looks at the CPU.
    pub fn detect() -> Host {
        Host { arch: host_arch(), features: detect_features() }
    }

    /// Checks that a bundle built for `target_name` (architecture `arch`,
    /// assuming `features`) can run here.
    pub fn check(&self, target_name: &str, arch: Arch, features: &[String]) -> Result<(), Incompatible> {
        if arch != self.arch {
            return Err(Incompatible::Arch {
                target: target_name.to_string(),
                built_arch: arch.to_string(),
                host_arch: self.arch.to_string(),
            });
        }
        let missing: Vec<String> = features.iter().filter(|f| !self.features.contains(&f.as_str())).cloned().collect();
        if !missing.is_empty() {
            return Err(Incompatible::Features {
                target: target_name.to_string(),
                missing,
                host_arch: self.arch.to_string(),
                host_features: self.features.iter().map(|s| s.to_string()).collect(),
            });
        }
        Ok(())
    }

    /// The catalog targets this host can run, most specific last.
    pub fn runnable_targets(&self) -> Vec<&'static Target> {
        CATALOG
            .iter()
            .filter(|t| {
                let features: Vec<String> = t.features.iter().map(|s| s.to_string()).collect();
                self.check(t.name, t.arch, &features).is_ok()
            })
            .collect()
    }
}

fn host_arch() -> Arch {
    if cfg!(target_arch = "x86_64") {
        Arch::X86_64
    } else if cfg!(target_arch = "aarch64") {
        Arch::Aarch64
    } else {
        Arch::Armv7
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($name) { f.push($name); }
        )*};
    }
    probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16");
    // AMX: std's detection macro is unstable for it; CPUID leaf 7 EDX bits
    // 24 (AMX-TILE) and 22 (AMX-BF16), and the kernel must manage the tile
    // state (it lists `amx_tile` in /proc/cpuinfo only then); leaf 7 exists
    // on every CPU with AVX2
    if f.contains(&"avx2") {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let xcr0_tiles = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_tile"));
        if xcr0_tiles && leaf7.edx & (1 << 24) != 0 {
            f.push("amx-tile");
            if leaf7.edx & (1 << 22) != 0 {
                f.push("amx-bf16");
            }
        }
    }
    f
}

#[cfg(target_arch = "aarch64")]
fn detect_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {$(
            if std::arch::is_aarch64_feature_detected!($name) { f.push($name); }
        )*};
    }
    probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve");
    f
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_features() -> Vec<&'static str> {
    // armv7: NEON is optional (not in armv7-unknown-linux-gnueabihf's baseline)
    // and std's detection macro is unstable there: read the kernel's HWCAP
    // from the auxiliary vector (32-bit words: type, value), HWCAP_NEON = 1 << 12
    if cfg!(target_feature = "neon") {
        return vec!["neon"];
    }
    const AT_HWCAP: u32 = 16;
    const HWCAP_NEON: u32 = 1 << 12;
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    let words: Vec<u32> = auxv.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    let hwcap = words.chunks_exact(2).find(|kv| kv[0] == AT_HWCAP).map(|kv| kv[1]).unwrap_or(0);
    if hwcap & HWCAP_NEON != 0 {
        vec!["neon"]
    } else {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_triples_match_arch() {
        for (i, t) in CATALOG.iter().enumerate() {
            assert!(CATALOG[i + 1..].iter().all(|u| u.name != t.name), "duplicate {}", t.name);
            assert!(t.triple.starts_with(t.arch.as_str()), "{} triple {}", t.name, t.triple);
        }
    }

    #[test]
    fn unknown_target_lists_known_ones() {
        let err = lookup("ml_c99").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown target `ml_c99`"), "{msg}");
        assert!(msg.contains("rasp4b") && msg.contains("x86_64-avx512"), "{msg}");
    }

    #[test]
    fn host_alias_is_the_generic_target() {
        assert_eq!(lookup("host").unwrap().arch, Host::detect().arch);
    }

    #[test]
    fn host_runs_its_generic_target() {
        let host = Host::detect();
        let generic = lookup(host.arch.as_str()).unwrap();
        let f: Vec<String> = generic.features.iter().map(|s| s.to_string()).collect();
        if host.arch != Arch::Armv7 {
            host.check(generic.name, generic.arch, &f).unwrap();
        }
    }

    #[test]
    fn foreign_arch_and_missing_features_are_refused() {
        let host = Host { arch: Arch::X86_64, features: vec!["avx2"] };
        let e = host.check("rasp4b", Arch::Aarch64, &["neon".into()]).unwrap_err();
        assert_eq!(e.to_string(), "bundle was compiled for rasp4b (aarch64), this host is x86_64");
        let e = host.check("ml_c5", Arch::X86_64, &["avx2".into(), "avx512f".into()]).unwrap_err();
        assert!(e.to_string().contains("lacks: avx512f"), "{e}");
    }
}
