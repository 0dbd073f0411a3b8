//! Phone numbers: parsing, validation and E.164 normalisation.
//!
//! Validation uses the libphonenumber metadata shipped with the `phonenumber`
//! crate. That metadata is decoded once, lazily, on first use (a process-wide
//! static inside the crate) and shared by every later call.
//!
//! Input is untrusted (typed by a user or read from an imported contact file),
//! so before anything reaches the library it is reduced to a compact form: an
//! optional leading `+` followed by ASCII digits. Spaces, dashes, dots, slashes
//! and parentheses are dropped; anything else (letters, extensions, URI
//! parameters) is rejected.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id as CountryId;
use phonenumber::metadata::DATABASE;
use phonenumber::Mode;

/// Longest input (in characters) that [`Phone::parse`] looks at. Longer inputs are
/// rejected without parsing: no real phone number, however decorated, needs more.
pub const MAX_PHONE_INPUT_CHARS: usize = 64;

/// Most digits a compacted number may have before it reaches libphonenumber: 15
/// for E.164 plus room for an international prefix and a trunk prefix.
const MAX_COMPACT_DIGITS: usize = 22;

/// How much of a bad value error messages quote.
const MAX_QUOTED_CHARS: usize = 64;

/// Errors from parsing a phone number or a region code.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PhoneError {
    /// Not a valid phone number.
    #[error("not a valid phone number: {0:?} (expected E.164 such as +919812345678)")]
    Invalid(String),
    /// A national number was given but there is no default region to interpret it in.
    #[error(
        "not a valid phone number: {0:?} (no country code; give it in E.164 such as \
         +919812345678 or set a default region with --region)"
    )]
    NoRegion(String),
    /// A region code that is not a known ISO 3166-1 alpha-2 code.
    #[error("unknown region: {0:?} (expected a two-letter country code such as IN or US)")]
    UnknownRegion(String),
}

/// An E.164 phone number, normalised ("+919812345678"). Serde as the plain string.
#[derive(
    Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

/// A validated region code (uppercase ISO 3166-1 alpha-2 that libphonenumber knows).
/// Serde as the plain string.
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    /// Parse a region code such as `"IN"` or `"us"` (case-insensitive, surrounding
    /// whitespace ignored). The stored form is uppercase.
    pub fn parse(s: &str) -> Result<Region, PhoneError> {
        let code = s.trim().to_ascii_uppercase();
        let known = code.len() == 2
            && code.bytes().all(|b| b.is_ascii_uppercase())
            && CountryId::from_str(&code).is_ok()
            && DATABASE.by_id(code.as_str()).is_some();
        if known {
            Ok(Region(code))
        } else {
            Err(PhoneError::UnknownRegion(quoted(s)))
        }
    }

    /// The uppercase two-letter code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn id(&self) -> Option<CountryId> {
        CountryId::from_str(&self.0).ok()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Region {
    type Error = PhoneError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Region::parse(&s)
    }
}

impl From<Region> for String {
    fn from(r: Region) -> String {
        r.0
    }
}

impl Phone {
    /// Parse and validate a phone number.
    ///
    /// Accepts international input (`"+91 98123 45678"`, `"+1 (415) 555-2671"`,
    /// `"00 44 20 7946 0958"`) and, when `default_region` is given, national input
    /// (`"098123 45678"`, `"(415) 555-2671"`). The number must be valid according to
    /// the libphonenumber metadata, not merely of a possible length.
    pub fn parse(input: &str, default_region: Option<&Region>) -> Result<Phone, PhoneError> {
        let invalid = || PhoneError::Invalid(quoted(input));
        let compact = compact(input).ok_or_else(invalid)?;

        if let Some(phone) = compact
            .strip_prefix('+')
            .and_then(|digits| validate(digits, None))
        {
            return Ok(phone);
        }
        if compact.starts_with('+') {
            return Err(invalid());
        }

        if let Some(region) = default_region {
            if let Some(phone) = validate(&compact, Some(region)) {
                return Ok(phone);
            }
        }
        // "00" is the international prefix in most of the world; libphonenumber only
        // knows that when the default region uses it, so also try it as a "+".
        if let Some(rest) = compact.strip_prefix("00") {
            return validate(rest, None).ok_or_else(invalid);
        }
        if default_region.is_none() {
            return Err(PhoneError::NoRegion(quoted(input)));
        }
        Err(invalid())
    }

    /// The E.164 form, e.g. `"+919812345678"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Phone {
    type Error = PhoneError;
    /// Re-validates a stored number: it must be international (start with `+`) and
    /// valid; the result is the normalised E.164 form.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if !s.trim_start().starts_with('+') {
            return Err(PhoneError::Invalid(quoted(&s)));
        }
        Phone::parse(&s, None)
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

/// Validate `digits` with libphonenumber. With `region` None the digits must start
/// with a country code (they are parsed as if preceded by `+`).
fn validate(digits: &str, region: Option<&Region>) -> Option<Phone> {
    let (country, text) = match region {
        None => (None, format!("+{digits}")),
        Some(region) => (Some(region.id()?), digits.to_owned()),
    };
    let number = phonenumber::parse(country, &text).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    let e164 = phonenumber::format(&number).mode(Mode::E164).to_string();
    // Belt and braces: whatever the library says, only keep a well-formed E.164.
    let body = e164.strip_prefix('+')?;
    let well_formed = (2..=15).contains(&body.len())
        && body.bytes().all(|b| b.is_ascii_digit())
        && !body.starts_with('0');
    well_formed.then_some(Phone(e164))
}

/// Reduce user input to an optional leading `+` and ASCII digits, or None when it
/// contains anything that is not part of a plain phone number.
fn compact(input: &str) -> Option<String> {
    let input = input.trim();
    if input.is_empty() || input.chars().count() > MAX_PHONE_INPUT_CHARS {
        return None;
    }
    let mut out = String::with_capacity(input.len());
    let mut digits = 0usize;
    for c in input.chars() {
        if let Some(d) = decimal_digit(c) {
            out.push(d);
            digits += 1;
        } else if c == '+' || c == '\u{FF0B}' {
            // Only one plus, and only before the first digit.
            if digits > 0 || out.starts_with('+') {
                return None;
            }
            out.push('+');
        } else if !is_separator(c) {
            return None;
        }
    }
    (1..=MAX_COMPACT_DIGITS).contains(&digits).then_some(out)
}

/// ASCII digits plus the other decimal digit forms phones commonly put in contacts
/// (full-width, Arabic-Indic, extended Arabic-Indic, Devanagari).
fn decimal_digit(c: char) -> Option<char> {
    let zero = match c {
        '0'..='9' => return Some(c),
        '\u{FF10}'..='\u{FF19}' => 0xFF10,
        '\u{0660}'..='\u{0669}' => 0x0660,
        '\u{06F0}'..='\u{06F9}' => 0x06F0,
        '\u{0966}'..='\u{096F}' => 0x0966,
        _ => return None,
    };
    let value = u32::from(c) - zero;
    char::from_digit(value, 10)
}

fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '.' | '/' | '(' | ')' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{00AD}'
        )
}

/// The value to quote in an error message, shortened if it is very long.
fn quoted(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= MAX_QUOTED_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX_QUOTED_CHARS).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(code: &str) -> Region {
        Region::parse(code).expect("known region")
    }

    fn ok(input: &str, region_code: Option<&str>) -> String {
        let r = region_code.map(region);
        match Phone::parse(input, r.as_ref()) {
            Ok(p) => p.as_str().to_owned(),
            Err(e) => panic!("{input:?} with {region_code:?} should parse: {e}"),
        }
    }

    #[test]
    fn international_indian_us_uk_numbers() {
        assert_eq!(ok("+91 98123 45678", None), "+919812345678");
        assert_eq!(ok("+919812345678", None), "+919812345678");
        assert_eq!(ok("+1 (415) 555-2671", None), "+14155552671");
        assert_eq!(ok("+1-415-555-2671", None), "+14155552671");
        assert_eq!(ok("+44 20 7946 0958", None), "+442079460958");
        assert_eq!(ok("+44 7911 123456", None), "+447911123456");
        assert_eq!(ok("  +44.20.7946.0958  ", None), "+442079460958");
    }

    #[test]
    fn international_prefix_00() {
        assert_eq!(ok("00 44 20 7946 0958", None), "+442079460958");
        assert_eq!(ok("0091 98123 45678", None), "+919812345678");
        // With a region whose IDD is not 00 the 00 form still works.
        assert_eq!(ok("00 44 20 7946 0958", Some("US")), "+442079460958");
        // And the region's own IDD is understood.
        assert_eq!(ok("011 44 20 7946 0958", Some("US")), "+442079460958");
    }

    #[test]
    fn uk_trunk_zero_in_parentheses() {
        assert_eq!(ok("+44 (0)20 7946 0958", None), "+442079460958");
    }

    #[test]
    fn national_numbers_with_region() {
        assert_eq!(ok("098123 45678", Some("IN")), "+919812345678");
        assert_eq!(ok("98123 45678", Some("IN")), "+919812345678");
        assert_eq!(ok("(415) 555-2671", Some("US")), "+14155552671");
        assert_eq!(ok("020 7946 0958", Some("GB")), "+442079460958");
        // An international number ignores the default region.
        assert_eq!(ok("+1 415 555 2671", Some("IN")), "+14155552671");
    }

    #[test]
    fn other_digit_forms() {
        assert_eq!(ok("+９１ ９８１２３ ４５６７８", None), "+919812345678");
        assert_eq!(ok("+٩١٩٨١٢٣٤٥٦٧٨", None), "+919812345678");
    }

    #[test]
    fn rejects_with_exact_messages() {
        let e = Phone::parse("12345", Some(&region("IN"))).unwrap_err();
        assert_eq!(e, PhoneError::Invalid("12345".into()));
        assert_eq!(
            e.to_string(),
            r#"not a valid phone number: "12345" (expected E.164 such as +919812345678)"#
        );
        let e = Phone::parse("98123 45678", None).unwrap_err();
        assert_eq!(e, PhoneError::NoRegion("98123 45678".into()));
        assert_eq!(
            e.to_string(),
            "not a valid phone number: \"98123 45678\" (no country code; give it in E.164 \
             such as +919812345678 or set a default region with --region)"
        );
    }

    #[test]
    fn rejects_invalid_input() {
        let in_ = region("IN");
        for bad in [
            "",
            "   ",
            "+",
            "+91 12",
            "+1 415 555 267",   // too short
            "+1 415 555 26711", // too long
            "+999 1234 5678",   // no such country code
            "+91 98123 4567x",
            "call me",
            "+91 98123 45678 ext 12",
            "tel:+919812345678",
            "+91+9812345678",
            "9812+345678",
            "++919812345678",
            "+91\u{0}9812345678",
            "+1 800 FLOWERS",
        ] {
            let got = Phone::parse(bad, Some(&in_));
            assert_eq!(
                got,
                Err(PhoneError::Invalid(bad.trim().to_owned())),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Phone::parse("12345", None),
            Err(PhoneError::NoRegion(_))
        ));
        assert!(matches!(
            Phone::parse("abc", None),
            Err(PhoneError::Invalid(_))
        ));
        assert!(matches!(
            Phone::parse("+91 12", None),
            Err(PhoneError::Invalid(_))
        ));
        assert!(matches!(
            Phone::parse("", None),
            Err(PhoneError::Invalid(_))
        ));
    }

    #[test]
    fn possible_but_not_valid_is_rejected() {
        // Right length for the US but 555-01xx style area code 099 does not exist.
        assert!(Phone::parse("+1 099 555 2671", None).is_err());
    }

    #[test]
    fn long_input_is_rejected_and_quoted_briefly() {
        let long = "1".repeat(10_000);
        let Err(PhoneError::Invalid(quoted)) = Phone::parse(&long, None) else {
            panic!("expected Invalid");
        };
        assert_eq!(quoted.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }

    #[test]
    fn region_parse() {
        assert_eq!(region("IN").as_str(), "IN");
        assert_eq!(Region::parse(" us ").unwrap().to_string(), "US");
        for bad in ["XX", "", "USA", "1", "ZZ", "001", "É"] {
            let e = Region::parse(bad).unwrap_err();
            assert_eq!(e, PhoneError::UnknownRegion(bad.trim().to_owned()));
        }
        assert_eq!(
            Region::parse("XX").unwrap_err().to_string(),
            r#"unknown region: "XX" (expected a two-letter country code such as IN or US)"#
        );
    }

    #[test]
    fn display_and_try_from() {
        let p = Phone::parse("+91 98123 45678", None).unwrap();
        assert_eq!(p.to_string(), "+919812345678");
        assert_eq!(Phone::try_from("+919812345678".to_owned()), Ok(p.clone()));
        assert_eq!(String::from(p), "+919812345678");
        assert!(Phone::try_from("98123 45678".to_owned()).is_err());
        assert!(Phone::try_from("0091 98123 45678".to_owned()).is_err());
        assert!(Phone::try_from("+12345".to_owned()).is_err());
    }

    #[test]
    fn serde_as_plain_strings() {
        let p = Phone::parse("+1 (415) 555-2671", None).unwrap();
        let r = region("GB");
        // Serialization goes through `From<Phone> for String` (`into = "String"`).
        assert_eq!(String::from(p.clone()), "+14155552671");
        assert_eq!(String::from(r.clone()), "GB");
        assert_eq!(from_str::<Phone>("+14155552671"), Ok(p));
        assert!(from_str::<Phone>("12345").is_err());
        assert_eq!(from_str::<Region>("GB"), Ok(r));
        assert!(from_str::<Region>("XX").is_err());
    }

    fn from_str<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, serde::de::value::Error> {
        T::deserialize(serde::de::value::StrDeserializer::new(s))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Phone::parse(&s, None);
            let _ = Phone::parse(&s, Some(&region("IN")));
        }

        #[test]
        fn phone_like_input_never_panics_and_output_is_e164(
            s in "[+0-9 ()./-]{0,30}",
            r in prop::sample::select(vec!["IN", "US", "GB", "DE", "AU", "BR", "JP", "NZ"]),
        ) {
            let r = region(r);
            if let Ok(p) = Phone::parse(&s, Some(&r)) {
                let body = p.as_str().strip_prefix('+').expect("leading +");
                prop_assert!(body.bytes().all(|b| b.is_ascii_digit()));
                // The normal form parses back to itself.
                prop_assert_eq!(Phone::parse(p.as_str(), None), Ok(p.clone()));
            }
        }

        #[test]
        fn region_parse_never_panics(s in "\\PC{0,6}") {
            let _ = Region::parse(&s);
        }
    }
}
