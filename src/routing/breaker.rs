//! Per-replica health of each deployment: a circuit breaker (closed → open after N
//! consecutive failures → half-open after a cool-down, when exactly one probe goes through →
//! closed on its success, open again with a doubled cool-down on its failure), and the pause
//! a provider asked for with `429 Retry-After`, which is not a failure.
//!
//! Per replica on purpose: health is what this replica sees of a provider (its network path,
//! its connections), and a breaker must react within a request, not a store round trip.

use crate::policy::Routing;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cool-down never grows past this many times the policy's.
const MAX_COOLDOWN_FACTOR: u32 = 10;

/// Every deployment's health on this replica, keyed `model/deployment`.
#[derive(Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

#[derive(Default)]
struct State {
    /// Failures in a row while closed.
    failures: u32,
    /// Open until then (`None`: closed).
    open_until: Option<Instant>,
    /// The cool-down of the current opening.
    cooldown: Duration,
    /// A half-open probe is in flight.
    probing: bool,
    /// The provider asked for no requests before then.
    throttled_until: Option<Instant>,
}

/// May a request try the deployment now?
#[derive(Debug)]
pub enum Admit {
    /// Yes; give the attempt's outcome to the probe.
    Go(Probe),
    /// Its circuit is open (or its one probe is in flight): the next probe is possible in
    /// this long.
    Open(Duration),
    /// The provider asked for a pause that lasts this long yet.
    Throttled(Duration),
}

/// What an attempt showed of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It answered (a success, or the provider's verdict on the request such as a 400).
    Healthy,
    /// It failed: no connection, a 5xx, a timeout, a broken response.
    Failed,
    /// It said 429: pause it this long (not a failure: the key is busy, not broken).
    Throttled(Duration),
}

/// The right to try a deployment once; dropped without a verdict (the request was cancelled)
/// it frees a half-open probe slot without judging.
pub struct Probe {
    breakers: Arc<Breakers>,
    key: String,
    half_open: bool,
    failures: u32,
    cooldown: Duration,
    judged: bool,
}

/// A deployment's circuit, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Serving.
    Closed,
    /// Refusing until its cool-down ends.
    Open,
    /// Cool-down over: the next request probes it.
    HalfOpen,
}

impl CircuitState {
    /// 0 closed, 1 open, 2 half-open (the gauge's values).
    pub fn code(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

impl Breakers {
    /// No deployment seen yet.
    pub fn new() -> Arc<Breakers> {
        Arc::new(Breakers::default())
    }

    /// May a request try deployment `key` at `now` under `policy`?
    pub fn admit(self: &Arc<Self>, key: &str, policy: &Routing, now: Instant) -> Admit {
        let mut states = self.states.lock();
        let Some(s) = states.get_mut(key) else {
            return Admit::Go(self.probe(key, false, policy));
        };
        if let Some(t) = s.throttled_until {
            if now < t {
                return Admit::Throttled(t - now);
            }
            s.throttled_until = None;
        }
        let half_open = match s.open_until {
            None => false,
            Some(until) if now < until => return Admit::Open(until - now),
            Some(_) if s.probing => return Admit::Open(Duration::ZERO),
            Some(_) => {
                s.probing = true;
                true
            }
        };
        Admit::Go(self.probe(key, half_open, policy))
    }

    fn probe(self: &Arc<Self>, key: &str, half_open: bool, policy: &Routing) -> Probe {
        Probe {
            breakers: Arc::clone(self),
            key: key.to_owned(),
            half_open,
            failures: policy.breaker_failures.max(1),
            cooldown: policy.breaker_cooldown,
            judged: false,
        }
    }

    /// The circuit of `key` at `now`.
    pub fn state(&self, key: &str, now: Instant) -> CircuitState {
        match self.states.lock().get(key).and_then(|s| s.open_until) {
            None => CircuitState::Closed,
            Some(until) if now < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Every deployment's circuit (keys sorted), for metrics.
    pub fn states(&self, now: Instant) -> Vec<(String, CircuitState)> {
        let keys: Vec<String> = self.states.lock().keys().cloned().collect();
        let mut out: Vec<(String, CircuitState)> = keys
            .into_iter()
            .map(|k| {
                let st = self.state(&k, now);
                (k, st)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn judge(&self, p: &Probe, verdict: Verdict, now: Instant) {
        let mut states = self.states.lock();
        let s = states.entry(p.key.clone()).or_default();
        if p.half_open {
            s.probing = false;
        }
        match verdict {
            Verdict::Healthy => {
                s.failures = 0;
                s.open_until = None;
                s.cooldown = Duration::ZERO;
            }
            Verdict::Throttled(d) => {
                s.throttled_until = Some(now + d);
                // The deployment answered: a half-open probe proved it reachable.
                if p.half_open {
                    s.failures = 0;
                    s.open_until = None;
                    s.cooldown = Duration::ZERO;
                }
            }
            Verdict::Failed => {
                if p.half_open {
                    // The probe failed: open again, for twice as long (bounded).
                    let longest = p.cooldown.saturating_mul(MAX_COOLDOWN_FACTOR);
                    s.cooldown = s.cooldown.saturating_mul(2).clamp(p.cooldown, longest);
                    s.open_until = Some(now + s.cooldown);
                } else if s.open_until.is_none() {
                    s.failures += 1;
                    if s.failures >= p.failures {
                        s.cooldown = p.cooldown;
                        s.open_until = Some(now + p.cooldown);
                        s.failures = 0;
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("key", &self.key)
            .field("half_open", &self.half_open)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// Record what the attempt showed.
    pub fn verdict(mut self, verdict: Verdict) {
        self.judged = true;
        self.breakers.judge(&self, verdict, Instant::now());
    }

    /// [`Probe::verdict`] at a given time (tests).
    pub fn verdict_at(mut self, verdict: Verdict, now: Instant) {
        self.judged = true;
        self.breakers.judge(&self, verdict, now);
    }

    /// Is this the half-open probe of an open circuit?
    pub fn is_probe(&self) -> bool {
        self.half_open
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.judged
            && self.half_open
            && let Some(s) = self.breakers.states.lock().get_mut(&self.key)
        {
            s.probing = false;
        }
    }
}
