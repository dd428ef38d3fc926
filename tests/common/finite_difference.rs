//! The central finite-difference check of a gradient, shared by the gradient checks of the loss
//! (tests/gradient_check.rs) and of the constraints' penalties (tests/constraints.rs).

/// The step of the central differences: small enough that the curvature's error (ε²) stays far below the
/// tolerance, large enough that f64 rounding of the loss (about 1e-16 / ε) does too.
pub const EPS: f64 = 1e-6;

/// Checks `analytic`, the gradient at `params`, against central differences of `loss` (which gets the
/// parameters to evaluate at): for every parameter j, |analytic[j] − (loss(p + ε·e_j) − loss(p − ε·e_j))/2ε|
/// ≤ 1e-7 + 1e-5·|numeric|. A failure names `what`, the parameter, `quantity` (the function differentiated)
/// and both values. Returns the largest difference seen.
pub fn check_gradient(
    what: &str,
    quantity: &str,
    params: &[f64],
    analytic: &[f64],
    mut loss: impl FnMut(&[f64]) -> f64,
) -> f64 {
    assert_eq!(
        params.len(),
        analytic.len(),
        "{what}: one gradient per parameter"
    );
    let mut worst = 0.0f64;
    let mut p = params.to_vec();
    for j in 0..params.len() {
        p[j] = params[j] + EPS;
        let up = loss(&p);
        p[j] = params[j] - EPS;
        let down = loss(&p);
        p[j] = params[j];
        let numeric = (up - down) / (2.0 * EPS);
        let err = (analytic[j] - numeric).abs();
        let allowed = 1e-7 + 1e-5 * numeric.abs();
        assert!(
            err <= allowed,
            "{what}: {quantity} / d param[{j}] analytic {} vs numeric {numeric} (err {err:e})",
            analytic[j]
        );
        worst = worst.max(err);
    }
    worst
}
