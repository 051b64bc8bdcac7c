//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*`, run by `scripts/fuzz` under
//! libFuzzer) and of their corpus replay in the test suite (`tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes, feeds them to one parser that sees hostile input, and asserts what must
//! hold whatever the input: no panic, and no forged token accepted. Not an API.

// A broken invariant must crash here: that is how a fuzzer reports it.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use crate::identity::{DevAlgorithm, DevIssuer, IdentityVerifier, IssuerConfig};
use crate::providers::{Api, StreamObserver, parse_request, usage_from_body};
use bytes::Bytes;
use std::sync::OnceLock;

/// The names of the targets, as directories of `fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "token_form",
    "request_body",
    "sse_stream",
    "policy_file",
    "config_file",
    "workload_jwt",
];

/// Run target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "token_form" => token_form(data),
        "request_body" => request_body(data),
        "sse_stream" => sse_stream(data),
        "policy_file" => policy_file(data),
        "config_file" => config_file(data),
        "workload_jwt" => workload_jwt(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// The RFC 8693 form of `POST /v1/token`.
pub fn token_form(data: &[u8]) {
    if let Err(e) = crate::token::exchange::parse_form(data) {
        assert!(!e.code.is_empty() && !e.description.is_empty());
    }
}

/// What Tollgate reads of an OpenAI or Anthropic request body, for every endpoint.
pub fn request_body(data: &[u8]) {
    for api in Api::ALL {
        match parse_request(api, Bytes::copy_from_slice(data)) {
            Ok(mut req) => {
                let _ = (req.model(), req.stream(), req.max_tokens());
                let _ = (
                    req.prompt_text(),
                    req.prompt_sha256(),
                    req.estimate_input_tokens(),
                );
                let _ = req.shape();
                // The guardrails' rewrite (every text part replaced) always re-parses: it only
                // changes text inside strings of a body that parsed.
                let g = crate::guardrails::Guardrails::default();
                let _ = g.inspect(&req.prompt_text());
                if let Some(rewritten) = req.rewrite_prompt(&mut |s| Some(format!("[{}]", s.len())))
                {
                    let again = parse_request(api, rewritten).expect("a rewritten body parses");
                    assert_eq!(again.model(), req.model());
                }
                req.set_max_tokens(16);
                let body = req.upstream_body("upstream-model");
                // The rebuilt body is as good JSON as the one received (fields Tollgate does not
                // read pass through as raw JSON, so `1e400` stays what the client sent).
                if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
                    let v: serde_json::Value =
                        serde_json::from_slice(&body).expect("the upstream body is JSON");
                    assert_eq!(v["model"], "upstream-model", "the model sent is policy's");
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// An upstream's streamed answer, cut into chunks at points the first byte chooses, and the
/// same bytes as a plain body.
pub fn sse_stream(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    for api in Api::ALL {
        let mut o = StreamObserver::new(api, step % 2 == 0).with_output_limit(40, "gpt-4o");
        let mut relayed = 0usize;
        for chunk in body.chunks(step) {
            relayed += o.feed(chunk).len();
        }
        relayed += o.finish().len();
        let _ = (o.usage(), o.is_cut(), o.is_metered(), o.output_counted());
        // What goes to the client comes from what came in (a cut adds at most a closing event).
        assert!(
            relayed <= body.len() + 4096,
            "relayed {relayed} of {}",
            body.len()
        );
        let _ = usage_from_body(api, body);
    }
}

/// A policy file, through parsing and validation.
pub fn policy_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match crate::policy::load_str("fuzz.yaml", text) {
            Ok(set) => assert!(!set.digest().is_empty()),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// The server's TOML configuration, through parsing and validation.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = crate::config::Config::from_toml_str(text)
    {
        let _ = e.to_string();
    }
}

struct Jwt {
    rt: tokio::runtime::Runtime,
    verifier: IdentityVerifier,
    issuer: DevIssuer,
}

const FUZZ_ISSUER: &str = "https://issuer.fuzz.invalid";

fn jwt() -> &'static Jwt {
    static JWT: OnceLock<Jwt> = OnceLock::new();
    JWT.get_or_init(|| {
        // One directory per process: the issuer's keys are made fresh on each run.
        let dir = std::env::temp_dir().join(format!("tollgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let issuer = DevIssuer::load_or_create(&dir).expect("a dev issuer");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, issuer.jwks().to_string()).expect("jwks written");
        let cfg: IssuerConfig = serde_json::from_value(serde_json::json!({
            "name": "fuzz",
            "issuer": FUZZ_ISSUER,
            "jwks_file": jwks,
        }))
        .expect("an issuer config");
        let verifier =
            IdentityVerifier::new(vec![cfg], vec![], reqwest::Client::new()).expect("a verifier");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Jwt {
            rt,
            verifier,
            issuer,
        }
    })
}

/// A workload token: the bytes as a compact JWT (nothing unsigned by the issuer passes), and,
/// when they are a JSON object, as claims the issuer really signed (validation of any claims
/// never panics, and a token passes only with this issuer, an accepted audience and a subject).
pub fn workload_jwt(data: &[u8]) {
    let j = jwt();
    let token = String::from_utf8_lossy(data);
    let forged = j.rt.block_on(j.verifier.verify(&token));
    assert!(
        forged.is_err(),
        "a token not signed by the issuer was accepted"
    );
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data)
        && claims.is_object()
    {
        for alg in [DevAlgorithm::Rs256, DevAlgorithm::Es256] {
            let signed = j.issuer.sign_claims(&claims, alg).expect("signed");
            if let Ok(w) = j.rt.block_on(j.verifier.verify(&signed)) {
                assert_eq!(claims["iss"], FUZZ_ISSUER, "accepted from another issuer");
                assert!(!w.subject.is_empty(), "accepted without a subject");
            }
        }
    }
}
