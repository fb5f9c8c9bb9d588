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

/// [`gemm`] on every thread of the pool when the product is large enough to pay for it
/// (about 192³ multiply-adds, flex's own threshold).
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
    let threads = if m * n * k >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    unsafe { gemm_on(m, n, k, dst, dst_row, accumulate, lhs, rhs, threads) }
}

/// [`gemm`] with `dst`'s columns split in two halves that run on two threads: for the
/// thin products of a recurrent step (a batch of rows times a weight matrix), which are too
/// small for gemm's own threading to pay (it packs and synchronises per call) but large enough
/// that two halves do (measured here: a 20 x 200 x 800 step is faster on one thread, a
/// 20 x 650 x 2600 step about 1.5x faster on two).
///
/// # Safety
/// As for [`gemm`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_two_halves(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: Matrix,
    rhs: Matrix,
) {
    if m * n * k < 200 * 200 * 200 || n < 32 {
        return unsafe { gemm(m, n, k, dst, dst_row, accumulate, lhs, rhs) };
    }
    let left = n / 2;
    let right = Matrix {
        ptr: rhs.ptr.wrapping_offset(left as isize * rhs.col),
        ..rhs
    };
    let (dst_left, dst_right) = (Shared(dst), Shared(dst.wrapping_add(left)));
    let (lhs, rhs) = (Shared(lhs), (Shared(rhs), Shared(right)));
    // SAFETY: the halves write disjoint columns of `dst`; each reads the caller's operands.
    rayon::join(
        || unsafe {
            gemm(
                m,
                left,
                k,
                dst_left.get(),
                dst_row,
                accumulate,
                lhs.get(),
                rhs.0.get(),
            )
        },
        || unsafe {
            let (dst, lhs, rhs) = (dst_right.get(), lhs.get(), rhs.1.get());
            gemm(m, n - left, k, dst, dst_row, accumulate, lhs, rhs)
        },
    );
}

/// A pointer or operand handed to another thread, which only touches its own part of it.
#[derive(Clone, Copy)]
struct Shared<T>(T);

// SAFETY: see `gemm_two_halves`: the threads read shared operands and write disjoint parts.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    fn get(&self) -> T {
        self.0
    }
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
