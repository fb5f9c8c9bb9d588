//! Matrices where they lie in a buffer (a first element and row and column strides), and the
//! gemm call the fused kernels make on them.

/// A matrix operand for gemm: its first element and its row and column strides.
#[derive(Clone, Copy)]
pub(super) struct Matrix {
    pub ptr: *const f32,
    pub row: isize,
    pub col: isize,
}

impl Matrix {
    pub fn rows(ptr: *const f32, row: usize) -> Self {
        Matrix {
            ptr,
            row: row as isize,
            col: 1,
        }
    }

    pub fn transposed(self) -> Self {
        Matrix {
            ptr: self.ptr,
            row: self.col,
            col: self.row,
        }
    }

    /// The matrix from row `rows` on.
    pub fn down(self, rows: usize) -> Self {
        Matrix {
            ptr: self.ptr.wrapping_offset(rows as isize * self.row),
            ..self
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), `dst` `[m, n]` with rows
/// `dst_row` apart, `k` the inner dimension, on the calling thread.
///
/// # Safety
/// The operands must describe `[m, k]` and `[k, n]` matrices inside live buffers, `dst` an
/// `[m, n]` matrix that nothing else touches during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: Matrix,
    rhs: Matrix,
) {
    let threads = gemm::Parallelism::None;
    unsafe { gemm_on(m, n, k, dst, dst_row, accumulate, lhs, rhs, threads) }
}

/// How many threads a `[m, k]` by `[k, n]` product runs on: the pool's when it has about 192³
/// multiply-adds (flex's own threshold) or reads a right-hand side of 4 MB or more (2^20
/// floats). The second is decoding's case: one row against a layer's weights does few
/// multiply-adds but is bound by reading the weights, which two cores do faster than one once
/// the weights pay for waking the other thread (from 1 MB, a 6 x 384 GPT decoded 40% slower).
pub(super) fn threads_for(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m * n * k >= 192 * 192 * 192 || k * n >= 1 << 20 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// [`gemm`] on every thread of the pool when the product is large enough to pay for it
/// ([`threads_for`]).
///
/// # Safety
/// As for [`gemm`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_parallel(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: Matrix,
    rhs: Matrix,
) {
    let threads = threads_for(m, n, k);
    unsafe { gemm_on(m, n, k, dst, dst_row, accumulate, lhs, rhs, threads) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_on(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: Matrix,
    rhs: Matrix,
    threads: gemm::Parallelism,
) {
    // SAFETY: the caller's promise (see `gemm`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row as isize,
            accumulate,
            lhs.ptr,
            lhs.col,
            lhs.row,
            rhs.ptr,
            rhs.col,
            rhs.row,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}
