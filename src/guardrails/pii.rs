//! Personal data in a prompt: e-mail addresses, phone numbers, payment card numbers (a Luhn
//! check keeps order numbers and timestamps out) and national ids (US social security
//! numbers, UK national insurance numbers). A finding raises the request's data class to
//! `pii` for routing; the text itself is never changed or logged here.

use regex::Regex;
use std::sync::LazyLock;

struct Detector {
    kind: &'static str,
    re: Regex,
    valid: fn(&str) -> bool,
}

static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    let any = |_: &str| true;
    [
        (
            "email",
            r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
            any as fn(&str) -> bool,
        ),
        // North American numbers with separators, and international ones written with `+`.
        (
            "phone",
            r"(?:\+1[ .-]?)?(?:\(\d{3}\)\s?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b",
            any,
        ),
        ("phone", r"\+\d{1,3}(?:[ .-]?\d{2,4}){3,5}\b", any),
        ("card", r"\b\d(?:[ -]?\d){12,18}\b", luhn_card),
        ("national_id", r"\b\d{3}-\d{2}-\d{4}\b", us_ssn),
        (
            "national_id",
            r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
            any,
        ),
    ]
    .into_iter()
    // Constant patterns: `every_detector_compiles` proves none is dropped here.
    .filter_map(|(kind, re, valid)| Regex::new(re).ok().map(|re| Detector { kind, re, valid }))
    .collect()
});

/// The kinds of personal data found in `text` (each once, in detector order).
pub fn find(text: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for d in DETECTORS.iter() {
        if out.contains(&d.kind) {
            continue;
        }
        if d.re.find_iter(text).any(|m| (d.valid)(m.as_str())) {
            out.push(d.kind);
        }
    }
    out
}

/// A card number: 13 to 19 digits (separators ignored) passing the Luhn check.
fn luhn_card(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    luhn(&digits)
}

/// The Luhn (mod 10) check over `digits`, the check digit last.
pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A US social security number: no area 000, 666 or 9xx, no group 00, no serial 0000.
fn us_ssn(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, group, serial] = parts[..] else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_detector_compiles() {
        assert_eq!(DETECTORS.len(), 6);
    }

    #[test]
    fn personal_data_is_found_and_look_alikes_are_not() {
        let cases: [(&str, &[&str]); 12] = [
            ("write to jane.doe@example.co.uk today", &["email"]),
            ("call (415) 555-0132 or +1 415 555 0132", &["phone"]),
            ("ring +44 20 7946 0958", &["phone"]),
            ("card 4111 1111 1111 1111 exp 12/29", &["card"]),
            ("card 4111-1111-1111-1112", &[]),
            ("ssn 123-45-6789", &["national_id"]),
            ("ssn 666-45-6789 or 123-00-6789", &[]),
            ("NI number AB 12 34 56 C", &["national_id"]),
            ("order 2024-11-05 #1234567890123", &[]),
            ("the answer is 42, version 1.2.3", &[]),
            ("0000000000000000", &[]),
            ("mail me: a@b.io, card 378282246310005", &["email", "card"]),
        ];
        for (text, want) in cases {
            assert_eq!(find(text), want, "{text}");
        }
    }

    /// The check digit that makes `body` pass Luhn.
    fn check_digit(body: &[u32]) -> u32 {
        (0..10)
            .find(|d| {
                let mut v = body.to_vec();
                v.push(*d);
                luhn(&v)
            })
            .unwrap_or(0)
    }

    proptest! {
        #[test]
        fn any_card_number_with_a_good_check_digit_is_found_and_a_bad_one_is_not(
            body in proptest::collection::vec(0u32..10, 15),
            bump in 1u32..10,
        ) {
            prop_assume!(body.iter().any(|d| *d != body[0]));
            let good = check_digit(&body);
            let text = |last: u32| {
                let digits: String = body.iter().chain([last].iter()).map(|d| char::from_digit(*d, 10).unwrap_or('0')).collect();
                format!("pay with {} {} {} {} now", &digits[0..4], &digits[4..8], &digits[8..12], &digits[12..16])
            };
            prop_assert!(find(&text(good)).contains(&"card"));
            prop_assert!(!find(&text((good + bump) % 10)).contains(&"card"));
        }
    }
}
