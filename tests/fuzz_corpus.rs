//! The fuzz smoke run of the default test command: every fuzz target (`src/fuzzing.rs`, the
//! same bodies `fuzz/fuzz_targets/*` run under libFuzzer via `scripts/fuzz`) over its checked-in
//! corpus (`fuzz/corpus/<target>`), the crash regressions found so far
//! (`fuzz/regressions/<target>`, when any), and a few hundred deterministic mutants of each
//! input (bit flips, truncations, insertions, duplicated ranges, splices of two inputs). A
//! panic anywhere is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use tollgate::fuzzing;

const MUTANTS_PER_INPUT: usize = 400;

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    v.sort();
    v
}

/// xorshift64*: the same mutants on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b"\xc3",
    b"%",
    b"%FF",
    b"&",
    b"=",
    b"data: ",
    b"\n\n",
    b"event: ",
    b"[DONE]",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"model\":",
    b"&&",
    b"\xe2\x80\xae",
    b".",
    b"..",
];

fn mutate(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let cut = rng.below(d.len());
                d.truncate(cut);
            }
            2 => {
                let i = rng.below(d.len() + 1);
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                d.splice(i..i, ins.iter().copied());
            }
            3 if !d.is_empty() => {
                let a = rng.below(d.len());
                let b = (a + rng.below(64)).min(d.len());
                let chunk = d[a..b].to_vec();
                let at = rng.below(d.len() + 1);
                d.splice(at..at, chunk);
            }
            4 if !d.is_empty() => {
                let a = rng.below(d.len());
                let b = (a + rng.below(32)).min(d.len());
                d.drain(a..b);
            }
            5 if !other.is_empty() => {
                let keep = rng.below(d.len() + 1);
                let from = rng.below(other.len());
                d.truncate(keep);
                d.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    d
}

#[test]
fn every_fuzz_target_survives_its_corpus_regressions_and_their_mutants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut runs = 0usize;
    for target in fuzzing::TARGETS {
        let corpus = inputs(&root.join("corpus").join(target));
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{target} needs seed inputs (has {})",
            corpus.len()
        );
        let regressions = inputs(&root.join("regressions").join(target));
        for (path, data) in corpus.iter().chain(&regressions) {
            let r = std::panic::catch_unwind(|| fuzzing::run(target, data));
            assert!(r.is_ok(), "{target} panicked on {}", path.display());
            runs += 1;
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
        for (i, (path, data)) in corpus.iter().enumerate() {
            let other = &corpus[(i + 1) % corpus.len()].1;
            for n in 0..MUTANTS_PER_INPUT {
                let m = mutate(&mut rng, data, other);
                let r = std::panic::catch_unwind(|| fuzzing::run(target, &m));
                assert!(
                    r.is_ok(),
                    "{target} panicked on mutant {n} of {}: {:?}",
                    path.display(),
                    String::from_utf8_lossy(&m)
                );
                runs += 1;
            }
        }
    }
    assert!(runs > 4000, "{runs} runs");
}
