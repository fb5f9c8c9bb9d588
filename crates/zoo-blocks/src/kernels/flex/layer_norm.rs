//! LayerNorm one row at a time, on plain slices.

vectorised! {
    /// Normalises `x` into `y`; returns the row's mean and reciprocal standard deviation.
    pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], eps: f32) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mean) * rstd * g + b;
        }
        (mean, rstd)
    }
}

vectorised! {
    /// With `x̂ = (x - mean) rstd` and `g = dy ∘ gamma`:
    /// `dx = rstd (g - mean(g) - x̂ mean(g ∘ x̂))`; adds the row's `dy ∘ x̂` and `dy` to
    /// `dgamma` and `dbeta`. `stats` is the row's `(mean, rstd)`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        x: &[f32],
        gamma: &[f32],
        stats: (f32, f32),
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let (mean, rstd) = stats;
        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
        for i in 0..x.len() {
            let x_hat = (x[i] - mean) * rstd;
            let g = dy[i] * gamma[i];
            sum_g += g;
            sum_gx += g * x_hat;
            dgamma[i] += dy[i] * x_hat;
            dbeta[i] += dy[i];
        }
        let n = x.len() as f32;
        let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
        for i in 0..x.len() {
            let x_hat = (x[i] - mean) * rstd;
            dx[i] = rstd * (dy[i] * gamma[i] - mean_g - x_hat * mean_gx);
        }
    }
}
