//! Helpers the operators share: the tensor type of an 8-bit kernel type and the check
//! of an input against it, image shapes and padding, and tract's `Op` for an operator.

use tract_core::internal::*;

use crate::kernels::q8::QType;

/// The tensor type of an 8-bit kernel type.
pub(super) fn datum(q: QType) -> DatumType {
    match q {
        QType::U8 => u8::datum_type(),
        QType::I8 => i8::datum_type(),
    }
}

/// Checks that an input of an 8-bit operator holds `dtype`'s integers, quantized or
/// not (an archive's graph is untrusted input).
pub(super) fn ensure_integers(x: &Tensor, dtype: QType, op: &str, input: usize) -> TractResult<()> {
    ensure!(
        x.datum_type().unquantized() == datum(dtype).unquantized(),
        "{op} planned for {} input {input}, got {:?}",
        dtype.name(),
        x.datum_type()
    );
    Ok(())
}

/// An image operator's input shape, `[n, a, b, c]` or `[a, b, c]`: the number of
/// images and one image's shape.
pub(super) fn images(shape: &[usize]) -> (usize, &[usize]) {
    match shape {
        [n, image @ ..] if image.len() == 3 => (*n, image),
        image => (1, image),
    }
}

/// tract's `Op` for a Perch operator on a kernel: its name, and the kernel and the
/// geometry it was planned for (`kernel_name()`, `detail()`) as its info.
macro_rules! kernel_op {
    ($op:ty, $name:literal) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![self.kernel_name().into(), self.detail()])
            }

            op_as_typed_op!();
        }
    };
}
pub(super) use kernel_op;

/// A 2-D convolution's padding for an input of `hw`: top, left, bottom, right.
pub(super) fn padding(ps: &tract_core::ops::cnn::PoolSpec, hw: [usize; 2]) -> [usize; 4] {
    let pads = ps.computed_padding(&hw);
    [
        pads[0].pad_before,
        pads[1].pad_before,
        pads[0].pad_after,
        pads[1].pad_after,
    ]
}
