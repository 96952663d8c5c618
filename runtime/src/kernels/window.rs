//! The geometry of a 2-D window (a pooling window or a convolution kernel)
//! sliding over one plane, with concrete sizes: what neorun's plane kernels
//! (`pool`, and on x86-64 `gemm` and `depthwise`) share.

// elsewhere only `pool` uses it: dilations, `inside_columns` and `nchw` serve
// the x86-64 convolution kernels
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_core::ops::nn::DataFormat;

/// `(n, c, h, w)` of an NCHW input, or of a CHW one (one image).
pub fn nchw(shape: &[usize], format: DataFormat) -> TractResult<(usize, usize, usize, usize)> {
    match (format, shape) {
        (DataFormat::NCHW, &[n, c, h, w]) => Ok((n, c, h, w)),
        (DataFormat::CHW, &[c, h, w]) => Ok((1, c, h, w)),
        _ => bail!("expected a {format:?} input, got shape {shape:?}"),
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Input plane.
    pub h: usize,
    pub w: usize,
    /// Output plane.
    pub oh: usize,
    pub ow: usize,
    /// Window, strides, dilations.
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Padding.
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Window {
    /// `spec`'s `kh`×`kw` window over an `h`×`w` plane.
    pub fn new(spec: &PoolSpec, h: usize, w: usize, kh: usize, kw: usize) -> Window {
        let padding = spec.computed_padding(&[h, w]);
        let (strides, dilations) = (spec.strides(), spec.dilations());
        Window {
            h,
            w,
            oh: padding[0].convoluted,
            ow: padding[1].convoluted,
            kh,
            kw,
            sh: strides[0],
            sw: strides[1],
            dh: dilations[0],
            dw: dilations[1],
            top: padding[0].pad_before,
            left: padding[1].pad_before,
            bottom: padding[0].pad_after,
            right: padding[1].pad_after,
        }
    }

    /// For window column `kx`: the output columns `[a, b)` whose input
    /// column `ox·sw + kx·dw - left` lies inside the row, and the input
    /// column of `a`.
    pub fn inside_columns(&self, kx: usize) -> (usize, usize, usize) {
        let off = (kx * self.dw) as isize - self.left as isize;
        let a = if off < 0 { ((-off) as usize).div_ceil(self.sw).min(self.ow) } else { 0 };
        let b = if (self.w as isize) > off {
            (((self.w as isize - 1 - off) as usize) / self.sw + 1).clamp(a, self.ow)
        } else {
            a
        };
        // within the row even when a == b (a window column wholly in the
        // padding: a 1-wide plane with 2 columns of right padding)
        let start = ((a as isize * self.sw as isize + off).max(0) as usize).min(self.w);
        (a, b, start)
    }
}

/// Whether `conv` over inputs with `facts` is a convolution neorun's plane
/// kernels take (`GemmConv`, or `PlaneDepthwise` when depthwise): float
/// (not quantized), OIHW kernel, 2-D over NCHW or CHW planes, a bias of one
/// value or one per output channel. The inputs' types are checked by the
/// caller (f32, plain).
pub fn plane_conv(conv: &Conv, facts: &[TypedFact]) -> bool {
    let spec = &conv.pool_spec;
    conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        && spec.kernel_shape.len() == 2
        && facts.len() == 3
        && facts[0].rank() == 3 + spec.data_format.has_n() as usize
        && facts[1].rank() == 4
        && facts[2].shape.volume().to_usize().is_ok_and(|v| v == 1 || v == spec.output_channels)
}

/// Whether `conv` has one filter per channel (what `PlaneDepthwise` takes
/// among the convolutions `plane_conv` accepts).
pub fn is_depthwise(conv: &Conv) -> bool {
    let spec = &conv.pool_spec;
    conv.group > 1 && conv.group == spec.input_channels && conv.group == spec.output_channels
}
