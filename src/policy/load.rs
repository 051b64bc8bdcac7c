//! Reading a policy directory: parse every file, merge, validate, and report every problem
//! with the file and line of the entry it concerns.

use super::model::*;
use super::raw::{self, RawBinding, RawDuration, RawFile, RawLimits, RawPool};
use super::{Diagnostic, PolicyErrors, PolicySet};
use globset::Glob;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAX_TTL: Duration = Duration::from_secs(15 * 60);
/// A queued request holds a client connection: past a few minutes, refusing serves it better.
const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Output tokens of a request that names no cap, unless its binding says otherwise.
const DEFAULT_MAX_TOKENS: i64 = 512;
/// What a deployment may receive unless the policy says otherwise: no personal or health data.
const DEFAULT_DEPLOYMENT_CLASSES: crate::guardrails::ClassSet =
    crate::guardrails::ClassSet::PUBLIC_INTERNAL;
/// Requests that may wait at once per pool and replica unless `queue_max` says otherwise.
pub const DEFAULT_QUEUE_MAX: u32 = 100;

/// One file's text and where each named entry starts, for error lines.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    /// Line (1-based) of the first line at or after `from` whose trimmed text starts with
    /// `prefix`; `from` itself when none does.
    fn find(&self, from: usize, prefix: &str) -> usize {
        self.text
            .lines()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.trim_start().trim_start_matches("- ").starts_with(prefix))
            .map_or(from.max(1), |(i, _)| i + 1)
    }

    /// Line of a map entry `name:` (models, pools) or a list entry `name: <name>` (bindings).
    fn entry(&self, section: &str, name: &str) -> usize {
        let start = self.find(1, &format!("{section}:"));
        let key = self.find(start, &format!("{name}:"));
        if key != start {
            return key;
        }
        let quoted = self.find(start, &format!("\"{name}\":"));
        if quoted != start {
            return quoted;
        }
        self.find(start, &format!("name: {name}"))
    }
}

/// Files of a directory, sorted.
pub(super) fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        PolicyErrors(vec![Diagnostic {
            file: dir.to_owned(),
            line: 0,
            message: format!("cannot read policy directory: {e}"),
        }])
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Digest of the directory's policy files (names and contents).
pub(super) fn digest_dir(dir: &Path) -> Result<String, PolicyErrors> {
    let mut h = Sha256::new();
    for f in policy_files(dir)? {
        h.update(
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Load and validate a directory.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in policy_files(dir)? {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push(Source { path, text }),
            Err(e) => errors.push(Diagnostic {
                file: path,
                line: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut set = validate_sources(&sources, errors)?;
    set.digest = digest_dir(dir)?;
    Ok(set)
}

/// Load and validate one policy file's text, named `name` in diagnostics.
pub fn load_str(name: &str, text: &str) -> Result<PolicySet, PolicyErrors> {
    let sources = [Source {
        path: PathBuf::from(name),
        text: text.to_owned(),
    }];
    let mut set = validate_sources(&sources, Vec::new())?;
    set.digest = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(set)
}

fn validate_sources(
    sources: &[Source],
    mut errors: Vec<Diagnostic>,
) -> Result<PolicySet, PolicyErrors> {
    let mut parsed = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        if s.text.trim().is_empty()
            || s.text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        match serde_saphyr::from_str::<RawFile>(&s.text) {
            Ok(f) => parsed.push((i, f)),
            Err(e) => {
                let msg = e.to_string();
                errors.push(Diagnostic {
                    file: s.path.clone(),
                    line: line_of_error(&msg),
                    message: first_line(&msg),
                });
            }
        }
    }
    let mut v = Validator {
        sources,
        errors,
        set: PolicySet::default(),
    };
    v.merge(parsed);
    if v.errors.is_empty() {
        Ok(v.set)
    } else {
        Err(PolicyErrors(v.errors))
    }
}

/// The parser's first line, without its own `error: line N column M:` prefix (the line is
/// already in the diagnostic's position).
fn first_line(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, rest)) => rest.to_owned(),
        None => first.to_owned(),
    }
}

/// serde-saphyr errors mention "line N"; take the first number after it.
fn line_of_error(msg: &str) -> usize {
    msg.find("line ")
        .and_then(|i| msg[i + 5..].split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

struct Validator<'a> {
    sources: &'a [Source],
    errors: Vec<Diagnostic>,
    set: PolicySet,
}

impl Validator<'_> {
    fn err(&mut self, src: usize, line: usize, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.sources[src].path.clone(),
            line,
            message: message.into(),
        });
    }

    fn merge(&mut self, files: Vec<(usize, RawFile)>) {
        let mut model_at: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut pool_at: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut binding_at: Vec<(usize, usize)> = Vec::new();
        let mut raw_models = Vec::new();
        let mut raw_pools = Vec::new();
        let mut raw_bindings = Vec::new();
        for (src, f) in files {
            for (name, m) in f.models {
                let line = self.sources[src].entry("models", &name);
                if let Some((s0, l0)) = model_at.insert(name.clone(), (src, line)) {
                    let first = self.sources[s0].path.display().to_string();
                    self.err(
                        src,
                        line,
                        format!("model {name} is already defined at {first}:{l0}"),
                    );
                    continue;
                }
                raw_models.push((src, line, name, m));
            }
            for (name, p) in f.pools {
                let line = self.sources[src].entry("pools", &name);
                if let Some((s0, l0)) = pool_at.insert(name.clone(), (src, line)) {
                    let first = self.sources[s0].path.display().to_string();
                    self.err(
                        src,
                        line,
                        format!("pool {name} is already defined at {first}:{l0}"),
                    );
                    continue;
                }
                raw_pools.push((src, line, name, p));
            }
            for b in f.bindings {
                let line = self.sources[src].entry("bindings", &b.name);
                binding_at.push((src, line));
                raw_bindings.push((src, line, b));
            }
            for r in f.roles {
                let line = self.sources[src].find(
                    self.sources[src].find(1, "roles:"),
                    &format!("role: {}", r.role),
                );
                self.role(src, line, r);
            }
            // Entries may share a name (an error): each is looked for after the previous one.
            let mut at = self.sources[src].find(1, "rotations:");
            for r in f.rotations {
                let line = self.sources[src].find(at, &format!("name: {}", r.name));
                at = line + 1;
                self.rotation(src, line, r);
            }
        }
        for (src, line, name, m) in raw_models {
            self.model(src, line, name, m);
        }
        for (src, line, name, p) in raw_pools {
            self.pool(src, line, name, p);
        }
        self.check_fallbacks(&model_at);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (src, line, b) in raw_bindings {
            if seen.insert(b.name.clone(), line).is_some() {
                self.err(src, line, format!("binding {} is defined twice", b.name));
                continue;
            }
            self.binding(src, line, b);
        }
    }

    fn model(&mut self, src: usize, line: usize, name: String, m: raw::RawModel) {
        if !valid_id(&name, true) {
            self.err(
                src,
                line,
                format!("model name {name:?} has characters outside [A-Za-z0-9._:/-]"),
            );
        }
        let pl = self.sources[src].find(line, "price:");
        let price = self.price(src, pl, "price", &m.price);
        let classes = match &m.data_classes {
            Some(c) => {
                let at = self.sources[src].find(line, "data_classes:");
                self.classes(src, at, "data_classes", c)
            }
            None => DEFAULT_DEPLOYMENT_CLASSES,
        };
        let deployments = match (m.provider, m.deployments) {
            (Some(provider), None) => {
                // The short form: one deployment, named after its provider.
                if !valid_id(&provider, false) {
                    self.err(
                        src,
                        self.sources[src].find(line, "provider:"),
                        format!("provider {provider:?} must match [a-z0-9][a-z0-9-]*"),
                    );
                }
                vec![Deployment {
                    name: provider.clone(),
                    provider,
                    upstream_model: m.upstream_model.unwrap_or_else(|| name.clone()),
                    billing_owner: None,
                    weight: 1,
                    tier: 1,
                    limits: Limits::default(),
                    price,
                    data_classes: classes,
                }]
            }
            (None, Some(raw)) => {
                if m.upstream_model.is_some() {
                    self.err(
                        src,
                        self.sources[src].find(line, "upstream_model:"),
                        format!("model {name}: upstream_model belongs to each of its deployments"),
                    );
                }
                self.deployments(src, line, &name, (price, classes), raw)
            }
            (Some(_), Some(_)) => {
                self.err(
                    src,
                    line,
                    format!("model {name} has both provider and deployments: use one"),
                );
                Vec::new()
            }
            (None, None) => {
                self.err(
                    src,
                    line,
                    format!("model {name} needs a provider or a list of deployments"),
                );
                Vec::new()
            }
        };
        let routing = self.routing(src, line, m.routing);
        if deployments.is_empty() {
            return;
        }
        self.set.models.insert(
            name.clone(),
            Model {
                name,
                deployments,
                price,
                fallback: m.fallback,
                routing,
            },
        );
    }

    fn price(&mut self, src: usize, at: usize, field: &str, p: &raw::RawPrice) -> Price {
        let dollars = |name: &str, d: &raw::Decimal, this: &mut Self| match raw::micro_usd(&d.0) {
            Ok(v) => v,
            Err(e) => {
                this.err(src, at, format!("{field}.{name}: {e}"));
                0
            }
        };
        let input = dollars("input", &p.input, self);
        let output = dollars("output", &p.output, self);
        let cached = p
            .cached_input
            .as_ref()
            .map_or(input, |c| dollars("cached_input", c, self));
        Price {
            input_per_mtok_micro_usd: input,
            output_per_mtok_micro_usd: output,
            cached_input_per_mtok_micro_usd: cached,
        }
    }

    fn deployments(
        &mut self,
        src: usize,
        line: usize,
        model: &str,
        (price, classes): (Price, crate::guardrails::ClassSet),
        raw: Vec<raw::RawDeployment>,
    ) -> Vec<Deployment> {
        if raw.is_empty() {
            self.err(
                src,
                self.sources[src].find(line, "deployments:"),
                format!("model {model}: deployments must list at least one"),
            );
        }
        let mut at = self.sources[src].find(line, "deployments:");
        let mut out: Vec<Deployment> = Vec::new();
        for d in raw {
            let dl = self.sources[src].find(at, &format!("name: {}", d.name));
            at = dl + 1;
            if !valid_id(&d.name, false) {
                self.err(
                    src,
                    dl,
                    format!(
                        "deployment name {:?} must match [a-z0-9][a-z0-9-_.]*",
                        d.name
                    ),
                );
            }
            if out.iter().any(|o| o.name == d.name) {
                self.err(
                    src,
                    dl,
                    format!("model {model} has two deployments named {}", d.name),
                );
                continue;
            }
            if !valid_id(&d.provider, false) {
                self.err(
                    src,
                    self.sources[src].find(dl, "provider:"),
                    format!("provider {:?} must match [a-z0-9][a-z0-9-]*", d.provider),
                );
            }
            let weight = match d.weight {
                None => 1,
                Some(w @ 0..=1000) => w as u32,
                Some(w) => {
                    self.err(
                        src,
                        self.sources[src].find(dl, "weight:"),
                        format!("weight must be between 0 and 1000, not {w}"),
                    );
                    1
                }
            };
            let tier = match d.tier {
                None => 1,
                Some(t @ 1..=9) => t as u8,
                Some(t) => {
                    self.err(
                        src,
                        self.sources[src].find(dl, "tier:"),
                        format!("tier must be between 1 and 9, not {t}"),
                    );
                    1
                }
            };
            if let Some(o) = &d.billing_owner
                && o.trim().is_empty()
            {
                self.err(src, dl, "billing_owner must not be empty");
            }
            let limits = self.limits(src, dl, d.limits);
            let price = match &d.price {
                Some(p) => {
                    let pl = self.sources[src].find(dl, "price:");
                    self.price(src, pl, "price", p)
                }
                None => price,
            };
            let data_classes = match &d.data_classes {
                Some(c) => {
                    let at = self.sources[src].find(dl, "data_classes:");
                    self.classes(src, at, "data_classes", c)
                }
                None => classes,
            };
            out.push(Deployment {
                upstream_model: d.upstream_model.unwrap_or_else(|| model.to_owned()),
                name: d.name,
                provider: d.provider,
                billing_owner: d.billing_owner,
                weight,
                tier,
                limits,
                price,
                data_classes,
            });
        }
        out
    }

    fn routing(&mut self, src: usize, line: usize, r: Option<raw::RawRouting>) -> Routing {
        let mut out = Routing::default();
        let Some(r) = r else { return out };
        let rl = self.sources[src].find(line, "routing:");
        let duration = |this: &mut Self, field: &str, v: &RawDuration| -> Option<Duration> {
            let at = this.sources[src].find(rl, &format!("{field}:"));
            let d = match v {
                RawDuration::Secs(s) => Duration::from_secs(*s),
                RawDuration::Text(t) => match humantime::parse_duration(t) {
                    Ok(d) => d,
                    Err(e) => {
                        this.err(src, at, format!("routing: {field}: {e}"));
                        return None;
                    }
                },
            };
            if d < Duration::from_millis(100) || d > Duration::from_secs(15 * 60) {
                this.err(
                    src,
                    at,
                    format!("routing: {field} must be between 100ms and 15m"),
                );
                return None;
            }
            Some(d)
        };
        match r.retries {
            None => {}
            Some(n @ 0..=5) => out.retries = n as u32,
            Some(n) => self.err(
                src,
                self.sources[src].find(rl, "retries:"),
                format!("routing: retries must be between 0 and 5, not {n}"),
            ),
        }
        if let Some(d) = r
            .deadline
            .as_ref()
            .and_then(|d| duration(self, "deadline", d))
        {
            out.deadline = Some(d);
        }
        if let Some(b) = r.breaker {
            match b.failures {
                None => {}
                Some(n @ 1..=100) => out.breaker_failures = n as u32,
                Some(n) => self.err(
                    src,
                    self.sources[src].find(rl, "failures:"),
                    format!("routing: breaker.failures must be between 1 and 100, not {n}"),
                ),
            }
            if let Some(d) = b
                .cooldown
                .as_ref()
                .and_then(|d| duration(self, "cooldown", d))
            {
                out.breaker_cooldown = d;
            }
        }
        out
    }

    fn check_fallbacks(&mut self, at: &BTreeMap<String, (usize, usize)>) {
        let models = self.set.models.clone();
        for m in models.values() {
            let Some(fb) = &m.fallback else { continue };
            let (src, line) = at.get(&m.name).copied().unwrap_or((0, 1));
            let fl = self.sources[src].find(line, "fallback:");
            match models.get(fb) {
                None => self.err(
                    src,
                    fl,
                    format!("fallback {fb} of model {} is not a defined model", m.name),
                ),
                // A request falls back within the API family it was sent in: every provider
                // of the fallback is one the model itself is served by.
                Some(f) if f.providers().any(|p| !m.providers().any(|q| q == p)) => self.err(
                    src,
                    fl,
                    format!(
                        "fallback {fb} of model {} is served by a provider it is not ({})",
                        m.name,
                        f.providers()
                            .filter(|p| !m.providers().any(|q| q == *p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some(_) => {
                    let mut cur = fb.clone();
                    for _ in 0..=models.len() {
                        if cur == m.name {
                            self.err(
                                src,
                                fl,
                                format!("fallback chain of model {} loops back to it", m.name),
                            );
                            break;
                        }
                        match models.get(&cur).and_then(|x| x.fallback.clone()) {
                            Some(n) => cur = n,
                            None => break,
                        }
                    }
                }
            }
        }
    }

    fn limits(&mut self, src: usize, line: usize, l: Option<RawLimits>) -> Limits {
        let l = l.unwrap_or_default();
        let ll = self.sources[src].find(line, "limits:");
        let pos = |name: &str, v: Option<i64>, this: &mut Self| -> Option<u64> {
            match v {
                None => None,
                Some(n) if n > 0 => Some(n as u64),
                Some(n) => {
                    this.err(
                        src,
                        ll,
                        format!("limits.{name} must be a positive integer, not {n}"),
                    );
                    None
                }
            }
        };
        let rpm = pos("rpm", l.rpm, self);
        let tpm = pos("tpm", l.tpm, self);
        let concurrency = pos("concurrency", l.concurrency, self);
        Limits {
            rpm: rpm.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            tpm,
            concurrency: concurrency.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
        }
    }

    fn pool(&mut self, src: usize, line: usize, name: String, p: RawPool) {
        if !valid_id(&name, false) {
            self.err(
                src,
                line,
                format!("pool name {name:?} must match [a-z0-9][a-z0-9-_.]*"),
            );
        }
        let budget = p.budget.as_ref().map(|b| {
            let bl = self.sources[src].find(line, "budget:");
            let limit_micro_usd = match raw::micro_usd(&b.usd.0) {
                Ok(0) => {
                    self.err(src, bl, "budget.usd must be greater than 0");
                    0
                }
                Ok(v) => v,
                Err(e) => {
                    self.err(src, bl, format!("budget.usd: {e}"));
                    0
                }
            };
            let window = parse_window(&b.window, b.anchor.as_ref().map(|a| a.0.as_str()))
                .unwrap_or_else(|e| {
                    self.err(src, bl, format!("budget.{e}"));
                    BudgetWindow::Daily
                });
            Budget {
                limit_micro_usd,
                window,
            }
        });
        let at_cap = self.at_cap(src, line, &p, budget.as_ref());
        let alerts = p.alerts.unwrap_or_else(|| vec![50, 80, 100]);
        let al = self.sources[src].find(line, "alerts:");
        if alerts.iter().any(|a| !(1..=100).contains(a)) || alerts.windows(2).any(|w| w[0] >= w[1])
        {
            self.err(
                src,
                al,
                "alerts must be percents between 1 and 100, strictly ascending",
            );
        }
        let fallback_at = p.fallback_at.and_then(|f| {
            if (1..=100).contains(&f) {
                Some(f as u8)
            } else {
                self.err(
                    src,
                    self.sources[src].find(line, "fallback_at:"),
                    "fallback_at must be a percent between 1 and 100",
                );
                None
            }
        });
        let limits = self.limits(src, line, p.limits);
        self.set.pools.insert(
            name.clone(),
            Pool {
                name,
                budget,
                alerts: alerts.into_iter().map(|a| a.clamp(0, 100) as u8).collect(),
                fallback_at,
                at_cap,
                limits,
            },
        );
    }

    /// `at_cap` with the fields that only apply to one of its actions.
    fn at_cap(&mut self, src: usize, line: usize, p: &RawPool, budget: Option<&Budget>) -> AtCap {
        let cl = self.sources[src].find(line, "at_cap:");
        let action = p.at_cap.as_deref().unwrap_or("reject");
        let only = |this: &mut Self, present: bool, field: &str, wanted: &str| {
            if present && action != wanted {
                this.err(
                    src,
                    this.sources[src].find(line, &format!("{field}:")),
                    format!("{field} only applies to at_cap: {wanted}"),
                );
            }
        };
        only(self, p.queue_timeout.is_some(), "queue_timeout", "queue");
        only(self, p.queue_max.is_some(), "queue_max", "queue");
        only(self, p.overdraft_usd.is_some(), "overdraft_usd", "degrade");
        match action {
            "reject" => AtCap::Reject,
            "queue" => {
                let tl = self.sources[src].find(line, "queue_timeout:");
                let timeout = match p.queue_timeout.as_deref().map(humantime::parse_duration) {
                    None => {
                        self.err(src, cl, "at_cap: queue needs queue_timeout");
                        Duration::ZERO
                    }
                    Some(Err(e)) => {
                        self.err(src, tl, format!("queue_timeout: {e}"));
                        Duration::ZERO
                    }
                    Some(Ok(t)) if t.is_zero() || t > MAX_QUEUE_TIMEOUT => {
                        self.err(
                            src,
                            tl,
                            "queue_timeout must be more than 0 and at most 5m (a client waits that long)",
                        );
                        Duration::ZERO
                    }
                    Some(Ok(t)) => t,
                };
                let max_waiting = match p.queue_max {
                    None => DEFAULT_QUEUE_MAX,
                    Some(n @ 1..=100_000) => n as u32,
                    Some(_) => {
                        self.err(
                            src,
                            self.sources[src].find(line, "queue_max:"),
                            "queue_max must be between 1 and 100000",
                        );
                        DEFAULT_QUEUE_MAX
                    }
                };
                AtCap::Queue {
                    timeout,
                    max_waiting,
                }
            }
            "degrade" => {
                let ol = self.sources[src].find(line, "overdraft_usd:");
                let overdraft = match p.overdraft_usd.as_ref().map(|d| raw::micro_usd(&d.0)) {
                    None => {
                        self.err(
                            src,
                            cl,
                            "at_cap: degrade needs overdraft_usd (what the cheapest model may spend past the cap)",
                        );
                        0
                    }
                    Some(Err(e)) => {
                        self.err(src, ol, format!("overdraft_usd: {e}"));
                        0
                    }
                    Some(Ok(v)) => v,
                };
                match budget {
                    None => self.err(src, cl, "at_cap: degrade needs a budget"),
                    Some(b) if overdraft == 0 || overdraft > b.limit_micro_usd => self.err(
                        src,
                        ol,
                        "overdraft_usd must be more than 0 and at most the budget's usd",
                    ),
                    Some(_) => {}
                }
                AtCap::Degrade {
                    overdraft_micro_usd: overdraft,
                }
            }
            other => {
                self.err(
                    src,
                    cl,
                    format!("at_cap must be reject, queue or degrade, not {other:?}"),
                );
                AtCap::Reject
            }
        }
    }

    fn binding(&mut self, src: usize, line: usize, b: RawBinding) {
        if !valid_id(&b.name, false) {
            self.err(
                src,
                line,
                format!("binding name {:?} must match [a-z0-9][a-z0-9-_.]*", b.name),
            );
        }
        if !valid_id(&b.team, false) {
            self.err(
                src,
                self.sources[src].find(line, "team:"),
                format!("team {:?} must match [a-z0-9][a-z0-9-_.]*", b.team),
            );
        }
        if !self.set.pools.contains_key(&b.pool) {
            self.err(
                src,
                self.sources[src].find(line, "pool:"),
                format!("pool {} is not defined", b.pool),
            );
        }
        let ml = self.sources[src].find(line, "models:");
        if b.models.is_empty() {
            self.err(src, ml, "models must list at least one model");
        }
        for m in &b.models {
            if !self.set.models.contains_key(m) {
                self.err(src, ml, format!("model {m} is not defined"));
            }
        }
        let mat = self.sources[src].find(line, "match:");
        let glob = |field: &str, v: &Option<String>, this: &mut Self| {
            v.as_ref().and_then(|g| match Glob::new(g) {
                Ok(g) => Some(g.compile_matcher()),
                Err(e) => {
                    this.err(src, mat, format!("match.{field}: {e}"));
                    None
                }
            })
        };
        let matcher = Matcher {
            issuer: b.matcher.issuer.clone(),
            namespace: glob("namespace", &b.matcher.namespace, self),
            service_account: glob("service_account", &b.matcher.service_account, self),
            subject: glob("subject", &b.matcher.subject, self),
        };
        if b.matcher.namespace.is_none()
            && b.matcher.service_account.is_none()
            && b.matcher.subject.is_none()
        {
            self.err(
                src,
                mat,
                "match needs at least one of namespace, service_account, subject",
            );
        }
        let tl = self.sources[src].find(line, "token_ttl:");
        let token_ttl = match &b.token_ttl {
            None => MAX_TTL,
            Some(RawDuration::Secs(s)) => Duration::from_secs(*s),
            Some(RawDuration::Text(t)) => humantime::parse_duration(t).unwrap_or_else(|e| {
                self.err(src, tl, format!("token_ttl: {e}"));
                MAX_TTL
            }),
        };
        if token_ttl > MAX_TTL || token_ttl < Duration::from_secs(60) {
            self.err(src, tl, "token_ttl must be between 1m and 15m");
        }
        let xl = self.sources[src].find(line, "max_tokens:");
        // A conservative default: a request that names no cap gets 512 output tokens unless
        // the binding says otherwise.
        let (default, max) = match &b.max_tokens {
            None => (DEFAULT_MAX_TOKENS, 4096),
            Some(m) => {
                let max = m.max.unwrap_or(4096);
                (m.default.unwrap_or(max.min(DEFAULT_MAX_TOKENS)), max)
            }
        };
        if default < 1 || max < 1 || default > max || max > i64::from(u32::MAX) {
            self.err(src, xl, "max_tokens needs 1 <= default <= max");
        }
        let max_request_micro_usd =
            b.max_request_usd
                .as_ref()
                .and_then(|d| match raw::micro_usd(&d.0) {
                    Ok(0) | Err(_) => {
                        self.err(
                            src,
                            self.sources[src].find(line, "max_request_usd:"),
                            format!(
                                "max_request_usd must be a positive dollar amount, not {:?}",
                                d.0
                            ),
                        );
                        None
                    }
                    Ok(v) => Some(v),
                });
        let limits = self.limits(src, line, b.limits);
        let guardrails = self.guardrails(src, line, b.guardrails);
        self.set.bindings.push(Binding {
            billing_owner: b.billing_owner.unwrap_or_else(|| b.team.clone()),
            shared_keys: b.shared_keys.unwrap_or(true),
            log_prompts: b.log_prompts.unwrap_or(false),
            name: b.name,
            team: b.team,
            pool: b.pool,
            models: b.models,
            limits,
            token_ttl,
            max_tokens: MaxTokens {
                default: default.clamp(1, i64::from(u32::MAX)) as u32,
                max: max.clamp(1, i64::from(u32::MAX)) as u32,
            },
            max_request_micro_usd,
            guardrails,
            matcher,
        });
    }

    fn guardrails(
        &mut self,
        src: usize,
        line: usize,
        g: Option<raw::RawGuardrails>,
    ) -> crate::guardrails::Guardrails {
        use crate::guardrails::{Guardrails, InjectionAction, SecretAction, injection, secrets};
        let mut out = Guardrails::default();
        let Some(g) = g else { return out };
        let gl = self.sources[src].find(line, "guardrails:");
        let cap = |this: &mut Self, field: &str, v: Option<i64>| -> Option<u64> {
            match v {
                None => None,
                Some(n) if n > 0 => Some(n as u64),
                Some(n) => {
                    let at = this.sources[src].find(gl, &format!("{field}:"));
                    this.err(
                        src,
                        at,
                        format!("guardrails.{field} must be a positive integer, not {n}"),
                    );
                    None
                }
            }
        };
        out.max_prompt_tokens = cap(self, "max_prompt_tokens", g.max_prompt_tokens);
        out.max_messages = cap(self, "max_messages", g.max_messages);
        out.max_tools = cap(self, "max_tools", g.max_tools);
        out.max_images = cap(self, "max_images", g.max_images);
        out.detect_pii = g.detect_pii.unwrap_or(false);
        if let Some(stop) = g.stop {
            if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.chars().count() > 64) {
                let at = self.sources[src].find(gl, "stop:");
                self.err(
                    src,
                    at,
                    "guardrails.stop takes at most 4 stop sequences of 1 to 64 characters (OpenAI's limit)",
                );
            }
            out.stop = stop;
        }
        if let Some(c) = &g.data_classes {
            let at = self.sources[src].find(gl, "data_classes:");
            out.data_classes = self.classes(src, at, "guardrails.data_classes", c);
        }
        // Compile a policy's own patterns, each named; a bad one is reported, not dropped
        // silently.
        let named = |this: &mut Self, section: &str, p: &raw::RawNamedPattern| {
            let at = this.sources[src].find(gl, &format!("name: {}", p.name));
            if !valid_id(&p.name, false) {
                this.err(
                    src,
                    at,
                    format!(
                        "guardrails.{section}: pattern name {:?} must match [a-z0-9][a-z0-9-_.]*",
                        p.name
                    ),
                );
            }
            at
        };
        if let Some(sec) = g.secrets {
            let sl = self.sources[src].find(gl, "secrets:");
            out.secrets = match sec.action.as_deref() {
                None | Some("redact") => SecretAction::Redact,
                Some("block") => SecretAction::Block,
                Some("log") => SecretAction::Log,
                Some(other) => {
                    self.err(
                        src,
                        sl,
                        format!(
                            "guardrails.secrets.action must be redact, block or log, not {other:?}"
                        ),
                    );
                    SecretAction::Redact
                }
            };
            for p in sec.patterns.unwrap_or_default() {
                let at = named(self, "secrets", &p);
                match secrets::Pattern::custom(&p.name, &p.regex) {
                    Ok(c) => out.add_secret_pattern(c),
                    Err(e) => self.err(
                        src,
                        at,
                        format!("guardrails.secrets: pattern {}: {e}", p.name),
                    ),
                }
            }
        }
        if let Some(inj) = g.injection {
            let il = self.sources[src].find(gl, "injection:");
            out.injection = match inj.action.as_deref() {
                None | Some("flag") => InjectionAction::Flag,
                Some("block") => InjectionAction::Block,
                Some(other) => {
                    self.err(
                        src,
                        il,
                        format!("guardrails.injection.action must be flag or block, not {other:?}"),
                    );
                    InjectionAction::Flag
                }
            };
            if !inj.builtin_patterns.unwrap_or(true) {
                out.clear_injection_rules();
            }
            for p in inj.patterns.unwrap_or_default() {
                let at = named(self, "injection", &p);
                match injection::Rule::new(&p.name, &p.regex) {
                    Ok(r) => out.add_injection_rule(r),
                    Err(e) => self.err(
                        src,
                        at,
                        format!("guardrails.injection: pattern {}: {e}", p.name),
                    ),
                }
            }
            out.max_prompt_chars = match inj.max_prompt_chars {
                None => None,
                Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Some(n) => {
                    self.err(
                        src,
                        il,
                        format!(
                            "guardrails.injection.max_prompt_chars must be a positive integer, not {n}"
                        ),
                    );
                    None
                }
            };
            out.allow_code = inj.allow_code.unwrap_or(true);
        }
        out
    }

    /// A list of data class names.
    fn classes(
        &mut self,
        src: usize,
        at: usize,
        field: &str,
        names: &[String],
    ) -> crate::guardrails::ClassSet {
        use crate::guardrails::{ClassSet, DataClass};
        let mut set = ClassSet::EMPTY;
        for n in names {
            match DataClass::parse(n) {
                Some(c) => set = set.with(c),
                None => self.err(
                    src,
                    at,
                    format!("{field}: {n:?} is not a data class (public, internal, pii, phi)"),
                ),
            }
        }
        if names.is_empty() {
            self.err(
                src,
                at,
                format!("{field} must name at least one data class"),
            );
        }
        set
    }

    fn role(&mut self, src: usize, line: usize, r: raw::RawRole) {
        let Some(role) = Role::ALL.into_iter().find(|x| x.as_str() == r.role) else {
            self.err(
                src,
                line,
                format!(
                    "role must be admin, security, responder, finops or viewer, not {:?}",
                    r.role
                ),
            );
            return;
        };
        if r.subjects.is_empty() && r.groups.is_empty() {
            self.err(src, line, "a role needs subjects or groups");
        }
        let mut subjects = Vec::new();
        for s in &r.subjects {
            match Glob::new(s) {
                Ok(g) => subjects.push(g.compile_matcher()),
                Err(e) => self.err(src, line, format!("subjects: {e}")),
            }
        }
        self.set.roles.push(RoleGrant {
            role,
            subjects,
            groups: r.groups,
        });
    }

    fn rotation(&mut self, src: usize, line: usize, r: raw::RawRotation) {
        if !valid_id(&r.name, false) {
            self.err(
                src,
                line,
                format!(
                    "rotation schedule name {:?} must be a lower-case id",
                    r.name
                ),
            );
        } else if self.set.rotations.iter().any(|s| s.name == r.name) {
            self.err(
                src,
                line,
                format!("rotation schedule {} is defined twice", r.name),
            );
        }
        if r.keys.is_empty() {
            self.err(
                src,
                line,
                "keys: name the key ids this schedule rotates (globs such as openai/*)",
            );
        }
        let mut keys = Vec::new();
        for k in &r.keys {
            match Glob::new(k) {
                Ok(g) => keys.push(g.compile_matcher()),
                Err(e) => self.err(src, line, format!("keys: {e}")),
            }
        }
        let duration = |this: &mut Self, field: &str, v: &RawDuration| -> Option<Duration> {
            let at = this.sources[src].find(line, &format!("{field}:"));
            let d = match v {
                RawDuration::Secs(s) => Duration::from_secs(*s),
                RawDuration::Text(t) => match humantime::parse_duration(t) {
                    Ok(d) => d,
                    Err(e) => {
                        this.err(src, at, format!("{field}: {e}"));
                        return None;
                    }
                },
            };
            if d < Duration::from_secs(60) {
                this.err(src, at, format!("{field}: at least 1m"));
                return None;
            }
            Some(d)
        };
        let when = match (&r.every, &r.cron) {
            (Some(e), None) => duration(self, "every", e).map(RotationWhen::Every),
            (None, Some(c)) => match c.parse::<croner::Cron>() {
                Ok(cron) if c.split_whitespace().count() == 5 => {
                    Some(RotationWhen::Cron(Box::new(cron)))
                }
                Ok(_) => {
                    let at = self.sources[src].find(line, "cron:");
                    self.err(
                        src,
                        at,
                        format!("cron: {c:?} must have five fields (minute hour day-of-month month day-of-week, UTC)"),
                    );
                    None
                }
                Err(e) => {
                    let at = self.sources[src].find(line, "cron:");
                    self.err(src, at, format!("cron: {c:?}: {e}"));
                    None
                }
            },
            _ => {
                self.err(
                    src,
                    line,
                    "a rotation schedule takes exactly one of every (an interval such as 90d) or cron (five fields, UTC)",
                );
                None
            }
        };
        let retry_after = match &r.retry_after {
            None => Some(DEFAULT_ROTATION_RETRY),
            Some(v) => duration(self, "retry_after", v),
        };
        if let (Some(when), Some(retry_after)) = (when, retry_after) {
            self.set.rotations.push(RotationSchedule {
                name: r.name,
                keys,
                billing_owner: r.billing_owner,
                when,
                retry_after,
            });
        }
    }
}

/// How long after a rolled-back scheduled rotation the schedule tries again.
const DEFAULT_ROTATION_RETRY: Duration = Duration::from_secs(6 * 3600);

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `window` and its `anchor`; an error names the field at fault.
fn parse_window(w: &str, anchor: Option<&str>) -> Result<BudgetWindow, String> {
    let window = match w {
        "daily" => BudgetWindow::Daily,
        "weekly" => BudgetWindow::Weekly { start: 0 },
        "monthly" => BudgetWindow::Monthly { start: 1 },
        other => {
            let days = other
                .strip_prefix("rolling:")
                .and_then(|d| d.parse::<u16>().ok())
                .filter(|d| (1..=366).contains(d))
                .ok_or_else(|| {
                    format!("window: {other:?} is not daily, weekly, monthly or rolling:<1..366>")
                })?;
            BudgetWindow::Rolling { days }
        }
    };
    let Some(a) = anchor else {
        return Ok(window);
    };
    match window {
        BudgetWindow::Weekly { .. } => WEEKDAYS
            .iter()
            .position(|d| d.eq_ignore_ascii_case(a) || d[..3].eq_ignore_ascii_case(a))
            .map(|i| BudgetWindow::Weekly { start: i as u8 })
            .ok_or_else(|| format!("anchor: a weekly window starts on a weekday (monday … sunday), not {a:?}")),
        BudgetWindow::Monthly { .. } => a
            .parse::<u8>()
            .ok()
            .filter(|d| (1..=28).contains(d))
            .map(|start| BudgetWindow::Monthly { start })
            .ok_or_else(|| {
                format!("anchor: a monthly window starts on a day of the month from 1 to 28 (every month has it), not {a:?}")
            }),
        _ => Err("anchor: only weekly and monthly windows take an anchor (daily windows start at 00:00 UTC, rolling windows end now)".to_owned()),
    }
}

/// Names: lower-case ids for pools/teams/bindings/providers; model names may also hold
/// upper case, `.`, `:` and `/` (e.g. `meta/llama-3.1:8b`).
fn valid_id(s: &str, model: bool) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let ok_first = first.is_ascii_lowercase()
        || first.is_ascii_digit()
        || (model && first.is_ascii_uppercase());
    ok_first
        && s.len() <= 128
        && s.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '-' | '_' | '.')
                || (model && (c.is_ascii_uppercase() || matches!(c, ':' | '/')))
        })
}
