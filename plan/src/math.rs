//! The arithmetic of the plan's nodes on the CPU, in f32: the definition the GPU kernels in
//! `kernels/` and the runtime's cuBLAS calls must agree with.

/// GELU, tanh approximation (PyTorch's `gelu(x, approximate="tanh")`).
pub fn gelu(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// d gelu / dx for the tanh approximation.
pub fn gelu_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    let u = C * (x + 0.044_715 * x * x * x);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * x * x)
}

/// `c = alpha · op(a) · op(b) + beta · c`, row-major; op(a) is m × k, op(b) is k × n.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let x = if trans_a { a[p * m + i] } else { a[i * k + p] };
                let y = if trans_b { b[j * k + p] } else { b[p * n + j] };
                acc += x as f64 * y as f64;
            }
            let out = &mut c[i * n + j];
            *out = alpha * acc as f32 + if beta == 0.0 { 0.0 } else { beta * *out };
        }
    }
}
