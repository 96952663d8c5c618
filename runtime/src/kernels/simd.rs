//! Leaf helpers the x86-64 kernels share: the CPU check they all make and
//! the ReLU they apply to their output.

/// Whether this CPU has what neorun's x86-64 kernels need (AVX2 and FMA).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// max(x, 0), in place.
pub fn relu(y: &mut [f32]) {
    for v in y {
        // written as a comparison, not f32::max, so that it vectorises to
        // one instruction; NaN becomes 0, as max(NaN, 0) does
        *v = if *v > 0.0 { *v } else { 0.0 };
    }
}
