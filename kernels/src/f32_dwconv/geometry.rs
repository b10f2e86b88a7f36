//! The shape of a depthwise convolution, the layouts of its images, and what the
//! layouts' drivers share: one checked call, and the slack past scratch buffers.

use crate::Unsupported;

/// One checked call of a layout's driver: the images, their buffers (lengths checked
/// against the geometry), the scratch and the activation's bounds.
pub(super) struct Call<'a> {
    pub(super) images: usize,
    pub(super) input: &'a [f32],
    pub(super) weights: &'a [f32],
    pub(super) bias: Option<&'a [f32]>,
    pub(super) output: &'a mut [f32],
    pub(super) scratch: &'a mut [f32],
    pub(super) lo: f32,
    pub(super) hi: f32,
}

/// Where the channels are in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Channels first: `C × H × W` (ONNX's NCHW without the batch).
    Chw,
    /// Channels last: `H × W × C`.
    Hwc,
}

impl Layout {
    /// `chw` or `hwc`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Chw => "chw",
            Layout::Hwc => "hwc",
        }
    }
}

/// The shape of one depthwise convolution: per image, `channels` channels of
/// `input[0] x input[1]`, one `kernel[0] x kernel[1]` filter per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DwGeometry {
    /// Channels (input = output: a multiplier of one).
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Filter height and width.
    pub kernel: [usize; 2],
    /// Stride: vertical, horizontal.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Output height and width (computed).
    pub output: [usize; 2],
}

impl DwGeometry {
    /// Checks a geometry and computes its output size.
    pub fn new(
        channels: usize,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> Result<DwGeometry, Unsupported> {
        let [t, l, b, r] = padding;
        let padded = [
            input[0].checked_add(t).and_then(|v| v.checked_add(b)),
            input[1].checked_add(l).and_then(|v| v.checked_add(r)),
        ];
        let (Some(ph), Some(pw)) = (padded[0], padded[1]) else {
            return Err(Unsupported("padding overflows".into()));
        };
        if channels == 0 || input.contains(&0) || kernel.contains(&0) || stride.contains(&0) {
            return Err(Unsupported(format!(
                "empty geometry ({channels} channels, input {input:?}, filter {kernel:?}, stride {stride:?})"
            )));
        }
        if ph < kernel[0] || pw < kernel[1] {
            return Err(Unsupported(format!(
                "the padded input {ph}x{pw} is smaller than the filter {}x{}",
                kernel[0], kernel[1]
            )));
        }
        let output = [
            (ph - kernel[0]) / stride[0] + 1,
            (pw - kernel[1]) / stride[1] + 1,
        ];
        // Every buffer this geometry implies, padded scratch included, must be
        // addressable.
        let fits = [[ph, pw], input, output].iter().all(|hw| {
            channels
                .checked_add(SLACK)
                .and_then(|c| c.checked_mul(hw[0] + SLACK))
                .and_then(|v| v.checked_mul(hw[1] + SLACK))
                .and_then(|v| v.checked_mul(4))
                .is_some()
        });
        if !fits {
            return Err(Unsupported("tensor sizes overflow".into()));
        }
        Ok(DwGeometry {
            channels,
            input,
            kernel,
            stride,
            padding,
            output,
        })
    }

    /// Elements of one image's input (`channels × H × W`).
    pub fn input_len(&self) -> usize {
        self.channels * self.input[0] * self.input[1]
    }

    /// Elements of one image's output.
    pub fn output_len(&self) -> usize {
        self.channels * self.output[0] * self.output[1]
    }

    /// Elements of the filters (`channels × kh × kw`).
    pub fn weights_len(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// The padded input's rows and columns that the output reads, no more.
    pub fn padded_shape(&self) -> [usize; 2] {
        [
            (self.output[0] - 1) * self.stride[0] + self.kernel[0],
            (self.output[1] - 1) * self.stride[1] + self.kernel[1],
        ]
    }

    /// Multiply-accumulates of one image.
    pub fn macs(&self) -> u64 {
        (self.output_len() * self.kernel[0] * self.kernel[1]) as u64
    }
}

/// Elements past a scratch buffer that a vector may read (the widest vector has 16
/// lanes; the lanes read past the data are never stored).
pub(super) const SLACK: usize = 16;
