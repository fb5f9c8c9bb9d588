//! Scalar forms of the transcendental functions our kernels apply per element.

/// e^x for f32 in plain arithmetic the compiler can inline and vectorise (libm's `expf` is a
/// call per element): Cephes' `expf`, `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6
/// polynomial for `e^r`, and `2^n` built from exponent bits; within 2 ulp. Inputs are clamped to
/// `[-87.3, 88.7]`, so the result never overflows and at worst underflows to about 1e-38, not 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n ln 2 is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer in plain arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.376_26);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n: n + 127 lands in the low mantissa bits of (n + 127 + ROUND); integer arithmetic moves
    // it into the exponent (a float-to-int cast would be a saturating conversion per element).
    let biased = (n + (127.0 + ROUND)).to_bits() - ROUND.to_bits();
    e_r * f32::from_bits(biased << 23)
}

/// erf(x) for f32 as a ratio of an odd and an even polynomial on [-4, 4] (beyond it erf is ±1
/// in f32); the approximation Eigen and XLA use, accurate to a few ulp. Plain `*` and `+`, not
/// `mul_add`: without the `fma` target feature `mul_add` is a libm call and nothing vectorises.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}
