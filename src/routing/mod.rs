//! Routing a model's requests over its deployments: the order a request tries them in
//! (tier by tier, spread by weight within a tier) and each deployment's health on this
//! replica (a circuit breaker with half-open probes, and the provider's own `Retry-After`).
//! The proxy walks the order; this module only decides, it never sends.

mod breaker;

pub use breaker::{Admit, Breakers, CircuitState, Probe, Verdict};

use crate::guardrails::ClassSet;
use crate::policy::Deployment;
use rand::Rng;

/// May `d` receive a request carrying `classes`? Only if it is cleared for every one of them.
pub fn cleared(d: &Deployment, classes: ClassSet) -> bool {
    d.data_classes.covers(classes)
}

/// The order in which a request tries `candidates` (indices into it): lower tiers first;
/// within a tier a weighted random permutation (each position drawn in proportion to the
/// weights left), so the first choice — the one that serves when all is well — is spread by
/// weight. Weight-0 deployments come last in their tier, in policy order: they serve only
/// when the others cannot.
pub fn order(candidates: &[&Deployment], rng: &mut impl Rng) -> Vec<usize> {
    let mut tiers: Vec<u8> = candidates.iter().map(|d| d.tier).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let mut out = Vec::with_capacity(candidates.len());
    for tier in tiers {
        let mut left: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].tier == tier && candidates[i].weight > 0)
            .collect();
        while !left.is_empty() {
            let total: u64 = left.iter().map(|&i| u64::from(candidates[i].weight)).sum();
            let mut ticket = rng.random_range(0..total);
            let mut pick = left.len() - 1;
            for (pos, &i) in left.iter().enumerate() {
                let w = u64::from(candidates[i].weight);
                if ticket < w {
                    pick = pos;
                    break;
                }
                ticket -= w;
            }
            out.push(left.remove(pick));
        }
        out.extend(
            (0..candidates.len())
                .filter(|&i| candidates[i].tier == tier && candidates[i].weight == 0),
        );
    }
    out
}

/// Full-jitter exponential backoff before round `round` (1-based) of retries: uniformly in
/// `[0, min(cap, base·2^(round-1))]`, so replicas retrying together spread out.
pub fn backoff(round: u32, rng: &mut impl Rng) -> std::time::Duration {
    const BASE_MS: u64 = 200;
    const CAP_MS: u64 = 5_000;
    let ceiling = BASE_MS
        .saturating_mul(1u64 << round.saturating_sub(1).min(16))
        .min(CAP_MS);
    std::time::Duration::from_millis(rng.random_range(0..=ceiling))
}

#[cfg(test)]
mod tests;
