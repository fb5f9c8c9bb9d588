//! Helpers shared by the blocks' tests: the test device, closeness checks and a finite-difference
//! gradient check.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn test_device() -> Device {
    let device = Device::flex();
    device.seed(7);
    device
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// A tensor of `shape` drawn from N(0, 1) by a generator of its own seeded with `seed`: the same
/// values whatever other tests draw from the device's shared generator at the same time.
pub fn normal<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let count: usize = shape.iter().product();
    // Box-Muller: two uniforms make a standard normal.
    let values: Vec<f32> = (0..count)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Asserts two tensors are equal element-wise within `tol` (absolute).
pub fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (to_vec(a), to_vec(b));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "max abs difference {worst} > {tol}");
}

/// Checks the gradient of the scalar `f(x)` with respect to `x` (of `shape`, drawn at random)
/// against central finite differences, on every coordinate. `device` must be an autodiff device.
///
/// In f32 a step of 1e-2 balances truncation and rounding error for the smooth functions
/// blocks compute; the tolerance is relative to the gradient's scale. A coordinate whose
/// difference quotient disagrees is tried again at a half and a quarter of the step: a ReLU's
/// kink within the step spoils the quotient, a smaller step that misses it does not. One that
/// still disagrees while its one-sided slopes differ by a jump (which a smooth function's
/// curvature cannot make at that step) that does not shrink with the step, or of which one side
/// is the analytic slope, sits on or just beside the kink, where no central quotient is the
/// derivative: it is skipped, at most a tenth of them. Anything else fails.
pub fn check_gradients<const D: usize>(
    shape: [usize; D],
    f: impl Fn(Tensor<D>) -> Tensor<1>,
    device: &Device,
) {
    // Drawn from a generator of its own: tests run in parallel share the device's.
    let x = normal(shape, 0x6772_6164, device);
    let base = to_vec(x.clone());
    let x = x.require_grad();
    let grads = f(x.clone()).backward();
    let analytic = to_vec(x.grad(&grads).expect("input takes part in the graph"));

    let eval = |values: Vec<f32>| -> f64 {
        let t = Tensor::<D>::from_data(TensorData::new(values, shape), device);
        f(t).into_scalar::<f64>()
    };
    let eps = 1e-2f32;
    let scale = analytic.iter().map(|g| g.abs()).fold(1e-3f32, f32::max);
    let tolerance = 2e-2 * scale;
    let at_base = eval(base.clone());
    // f one step either side of coordinate `i`.
    let around = |i: usize, step: f32| {
        let mut plus = base.clone();
        plus[i] += step;
        let mut minus = base.clone();
        minus[i] -= step;
        (eval(plus), eval(minus))
    };
    let mut kinks = 0;
    'coordinates: for i in 0..base.len() {
        let mut numeric = 0.0;
        for step in [eps, eps / 2.0, eps / 4.0] {
            let (up, down) = around(i, step);
            numeric = ((up - down) / (2.0 * step as f64)) as f32;
            if (numeric - analytic[i]).abs() <= tolerance {
                continue 'coordinates;
            }
        }
        let jump = |step: f32| {
            let (up, down) = around(i, step);
            ((up - at_base) - (at_base - down)).abs() / step as f64
        };
        // A kink within the smallest step spoils one side's quotient only: the other side's
        // is the slope the analytic gradient takes.
        let one_sided = {
            let step = eps / 4.0;
            let (up, down) = around(i, step);
            let slopes = [(up - at_base) / step as f64, (at_base - down) / step as f64];
            slopes
                .iter()
                .any(|&s| (s as f32 - analytic[i]).abs() <= tolerance)
        };
        if jump(eps / 4.0) as f32 > 2.0 * tolerance
            && (jump(eps / 4.0) > 0.5 * jump(eps) || one_sided)
        {
            kinks += 1;
            continue;
        }
        panic!(
            "gradient mismatch at {i}: analytic {} numeric {numeric} (scale {scale})",
            analytic[i]
        );
    }
    assert!(
        kinks * 10 <= base.len(),
        "{kinks} of {} coordinates sit on a kink: the check says too little",
        base.len()
    );
}

/// erf by its Taylor series in f64: exact to f64 rounding for |x| <= 4.
pub fn erf_reference(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..200 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}
