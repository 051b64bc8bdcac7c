//! Money and the cost of a request. Amounts are integer micro-dollars ([`Usd`]); prices are
//! micro-dollars per million tokens (from policy). Costs round *up* to the next micro-dollar,
//! so Tollgate may overstate a request's cost by under one micro-dollar but never understates
//! it — budgets err on the side of the cap.

use std::fmt;

/// An amount of US dollars in integer micro-dollars (1 USD = 1 000 000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub i64);

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);

    /// From micro-dollars.
    pub fn from_micros(m: i64) -> Usd {
        Usd(m)
    }

    /// Micro-dollars.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// For wire formats that carry dollars as a JSON number (token claims). Exact for every
    /// amount with at most 6 decimals below 10^9 USD, which is all Tollgate produces.
    pub fn as_f64_dollars(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    /// Inverse of [`Usd::as_f64_dollars`]; `None` for negative, non-finite or absurd values.
    pub fn from_f64_dollars(d: f64) -> Option<Usd> {
        if !d.is_finite() || !(0.0..1e9).contains(&d) {
            return None;
        }
        Some(Usd((d * 1_000_000.0).round() as i64))
    }

    /// Saturating sum.
    pub fn saturating_add(self, o: Usd) -> Usd {
        Usd(self.0.saturating_add(o.0))
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:06}", a / 1_000_000, a % 1_000_000)
    }
}

/// Prices of one model, micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: u64,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// All input tokens, cached ones included.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// The part of `input` read from the prompt cache.
    pub cached_input: u64,
}

/// Cost of `t` at `p`, rounded up to the micro-dollar.
pub fn cost(p: &Prices, t: &Tokens) -> Usd {
    let cached = t.cached_input.min(t.input);
    let fresh = t.input - cached;
    let numer = u128::from(fresh) * u128::from(p.input)
        + u128::from(cached) * u128::from(p.cached_input)
        + u128::from(t.output) * u128::from(p.output);
    let micros = numer.div_ceil(1_000_000);
    Usd(i64::try_from(micros).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINI: Prices = Prices {
        input: 150_000,
        output: 600_000,
        cached_input: 75_000,
    };

    #[test]
    fn cost_of_a_million_tokens_is_the_price() {
        let t = Tokens {
            input: 1_000_000,
            output: 1_000_000,
            cached_input: 0,
        };
        assert_eq!(cost(&MINI, &t), Usd(750_000));
    }

    #[test]
    fn cached_tokens_use_the_cached_price_and_partial_micros_round_up() {
        let t = Tokens {
            input: 10,
            output: 0,
            cached_input: 4,
        };
        // 6 * 0.15 + 4 * 0.075 = 1.2 micro-dollars -> 2
        assert_eq!(cost(&MINI, &t), Usd(2));
        assert_eq!(cost(&MINI, &Tokens::default()), Usd::ZERO);
    }

    #[test]
    fn display_is_dollars_with_six_decimals() {
        assert_eq!(Usd(1_500_000).to_string(), "$1.500000");
        assert_eq!(Usd(-3).to_string(), "-$0.000003");
    }

    proptest! {
        #[test]
        fn cost_never_understates(i in 0u64..10_000_000, o in 0u64..10_000_000, c in 0u64..10_000_000) {
            let t = Tokens { input: i, output: o, cached_input: c };
            let exact = (i - c.min(i)) as f64 * 0.15 + c.min(i) as f64 * 0.075 + o as f64 * 0.6;
            let got = cost(&MINI, &t).micros() as f64;
            prop_assert!(got + 1e-6 >= exact && got < exact + 1.0 + 1e-6);
        }

        #[test]
        fn dollars_round_trip(m in 0i64..999_999_999_999_999) {
            let u = Usd(m);
            prop_assert_eq!(Usd::from_f64_dollars(u.as_f64_dollars()), Some(u));
        }
    }
}
