//! vCard contact import: vCard 3.0 (RFC 2426) and 4.0 (RFC 6350), plus the
//! vCard 2.1 that Android's contact export still writes (bare parameters and
//! quoted-printable values with soft line breaks).
//!
//! Only what contact import needs is extracted: a display name and the raw TEL
//! values. A malformed card becomes a [`CardError`] with its line number and the
//! other cards still parse; only a text with no vCard at all (or absurdly many)
//! fails as a whole.

/// Most cards (well-formed or not, counting stray `END:VCARD` lines) one file may hold.
pub const MAX_CARDS: usize = 100_000;

/// How much of a bad value error messages quote.
const MAX_QUOTED_CHARS: usize = 40;

/// One well-formed card that has at least one phone number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    /// 1-based line of `BEGIN:VCARD`.
    pub line: usize,
    /// From FN, else from N (given name then family name).
    pub name: Option<String>,
    /// Raw TEL values in file order (any `tel:` URI scheme stripped).
    pub phones: Vec<String>,
}

/// A malformed card, to be skipped by the caller and reported with this line and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardError {
    /// 1-based line of the card's `BEGIN:VCARD` (or of the stray `END:VCARD`).
    pub line: usize,
    pub reason: String,
}

/// The result of parsing a vCard file: the good cards and the skipped ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcardFile {
    pub cards: Vec<Card>,
    pub errors: Vec<CardError>,
}

/// A failure of the whole file.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum VcardError {
    #[error("no vCard found (expected BEGIN:VCARD)")]
    NoVcard,
    #[error("too many vCards: more than {max} in one file")]
    TooManyCards { max: usize },
}

/// Parse every vCard in `text`.
pub fn parse_vcards(text: &str) -> Result<VcardFile, VcardError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut out = VcardFile::default();
    let mut open: Option<OpenCard> = None;
    let mut seen_begin = false;
    let mut count = 0usize;

    for logical in unfold(text) {
        let Some(prop) = Property::parse(&logical.text) else {
            // Not a content line (stray text, 2.1 base64 continuation...): skip it.
            continue;
        };
        if prop.name == "BEGIN" && prop.raw_value.trim().eq_ignore_ascii_case("VCARD") {
            seen_begin = true;
            count += 1;
            if count > MAX_CARDS {
                return Err(VcardError::TooManyCards { max: MAX_CARDS });
            }
            if let Some(card) = open.take() {
                out.errors.push(CardError {
                    line: card.line,
                    reason: format!(
                        "BEGIN:VCARD on line {} before this card's END:VCARD",
                        logical.line
                    ),
                });
            }
            open = Some(OpenCard::new(logical.line));
        } else if prop.name == "END" && prop.raw_value.trim().eq_ignore_ascii_case("VCARD") {
            match open.take() {
                Some(card) => match card.finish() {
                    Ok(card) => out.cards.push(card),
                    Err(e) => out.errors.push(e),
                },
                None => {
                    // Stray ENDs count toward the cap too, so errors stay bounded.
                    count += 1;
                    if count > MAX_CARDS {
                        return Err(VcardError::TooManyCards { max: MAX_CARDS });
                    }
                    out.errors.push(CardError {
                        line: logical.line,
                        reason: "END:VCARD without BEGIN:VCARD".to_owned(),
                    });
                }
            }
        } else if let Some(card) = open.as_mut() {
            card.add(&prop);
        }
    }
    if let Some(card) = open {
        out.errors.push(CardError {
            line: card.line,
            reason: "card is not closed (missing END:VCARD)".to_owned(),
        });
    }
    if !seen_begin {
        return Err(VcardError::NoVcard);
    }
    out.errors.sort_by_key(|e| e.line);
    Ok(out)
}

/// A card between BEGIN and END.
struct OpenCard {
    line: usize,
    version: Option<String>,
    full_name: Option<String>,
    structured_name: Option<String>,
    phones: Vec<String>,
}

impl OpenCard {
    fn new(line: usize) -> Self {
        OpenCard {
            line,
            version: None,
            full_name: None,
            structured_name: None,
            phones: Vec::new(),
        }
    }

    fn add(&mut self, prop: &Property<'_>) {
        match prop.name.as_str() {
            "VERSION" if self.version.is_none() => {
                self.version = Some(prop.raw_value.trim().to_owned());
            }
            "FN" if self.full_name.is_none() => {
                self.full_name = non_empty(unescape(&prop.value()));
            }
            "N" if self.structured_name.is_none() => {
                self.structured_name = name_from_n(&prop.value());
            }
            "TEL" => {
                if let Some(tel) = tel_value(&prop.value()) {
                    self.phones.push(tel);
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> Result<Card, CardError> {
        let fail = |reason: String| CardError {
            line: self.line,
            reason,
        };
        match self.version.as_deref() {
            None => {
                return Err(fail(
                    "card has no VERSION (expected VERSION:3.0 or VERSION:4.0)".to_owned(),
                ))
            }
            Some("2.1" | "3.0" | "4.0") => {}
            Some(other) => {
                return Err(fail(format!(
                    "unsupported vCard version {:?} (expected 3.0 or 4.0; 2.1 is also read)",
                    quoted(other)
                )))
            }
        }
        if self.phones.is_empty() {
            return Err(fail("card has no TEL (phone number)".to_owned()));
        }
        Ok(Card {
            line: self.line,
            name: self.full_name.or(self.structured_name),
            phones: self.phones,
        })
    }
}

/// A logical (unfolded) content line and the 1-based line it starts on.
struct Logical {
    line: usize,
    text: String,
}

/// Split into physical lines (LF or CRLF; a lone CR too) and unfold them: a line
/// starting with a space or tab continues the previous one. A quoted-printable
/// value ending in `=` (vCard 2.1 soft break) also continues on the next line.
fn unfold(text: &str) -> Vec<Logical> {
    let mut out: Vec<Logical> = Vec::new();
    let mut qp_soft_break = false;
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let continues_fold = line.starts_with([' ', '\t']);
        match out.last_mut() {
            Some(prev) if qp_soft_break && !line.trim().eq_ignore_ascii_case("END:VCARD") => {
                // Drop the soft-break "=" and join as is.
                prev.text.pop();
                prev.text.push_str(line);
            }
            Some(prev) if continues_fold => prev.text.push_str(&line[1..]),
            _ => out.push(Logical {
                line: index + 1,
                text: line.to_owned(),
            }),
        }
        qp_soft_break = out
            .last()
            .is_some_and(|l| l.text.ends_with('=') && is_quoted_printable(&l.text));
    }
    out
}

/// Whether a content line's parameters declare quoted-printable encoding.
fn is_quoted_printable(line: &str) -> bool {
    match split_name_value(line) {
        Some((head, _)) => head
            .split(';')
            .skip(1)
            .any(|p| p.trim().to_ascii_uppercase().ends_with("QUOTED-PRINTABLE")),
        None => false,
    }
}

/// Split `group.NAME;params:value` at the first colon outside a quoted parameter value.
fn split_name_value(line: &str) -> Option<(&str, &str)> {
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ':' if !in_quotes => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// One content line.
struct Property<'a> {
    /// Uppercase, without group.
    name: String,
    /// Parameters, uppercase keys; bare 2.1 parameters (`;CELL`) have key "TYPE".
    params: Vec<(String, &'a str)>,
    raw_value: &'a str,
}

impl<'a> Property<'a> {
    fn parse(line: &'a str) -> Option<Property<'a>> {
        let (head, raw_value) = split_name_value(line)?;
        let mut parts = head.split(';');
        let full_name = parts.next()?.trim();
        let name = full_name.rsplit('.').next()?.to_ascii_uppercase();
        if name.is_empty() {
            return None;
        }
        let params = parts
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_uppercase(), v.trim()),
                None => ("TYPE".to_owned(), p.trim()),
            })
            .collect();
        Some(Property {
            name,
            params,
            raw_value,
        })
    }

    fn param(&self, key: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim_matches('"'))
    }

    /// The value with any quoted-printable encoding removed (still vCard-escaped).
    fn value(&self) -> String {
        let qp = self
            .param("ENCODING")
            .is_some_and(|e| e.eq_ignore_ascii_case("QUOTED-PRINTABLE"))
            || self
                .params
                .iter()
                .any(|(k, v)| k == "TYPE" && v.eq_ignore_ascii_case("QUOTED-PRINTABLE"));
        if !qp {
            return self.raw_value.to_owned();
        }
        let bytes = decode_quoted_printable(self.raw_value);
        let latin1 = self.param("CHARSET").is_some_and(|c| {
            c.eq_ignore_ascii_case("ISO-8859-1") || c.eq_ignore_ascii_case("WINDOWS-1252")
        });
        if latin1 {
            bytes.iter().map(|&b| char::from(b)).collect()
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

/// Decode `=XX` hex escapes; a malformed escape is kept literally.
fn decode_quoted_printable(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'=' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                let h = std::str::from_utf8(h).ok()?;
                u8::from_str_radix(h, 16).ok()
            });
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// Undo vCard text escaping: `\\`, `\,`, `\;`, `\:` and `\n`/`\N`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(e @ ('\\' | ',' | ';' | ':')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Split a structured value on unescaped `;`, unescaping each component.
fn split_components(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ';' => {
                parts.push(unescape(&s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(unescape(&s[start..]));
    parts
}

/// "given family" from `N:family;given;additional;prefix;suffix`.
fn name_from_n(value: &str) -> Option<String> {
    let parts = split_components(value);
    let family = parts.first().map(|s| s.trim()).unwrap_or("");
    let given = parts.get(1).map(|s| s.trim()).unwrap_or("");
    let joined = [given, family]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    non_empty(joined)
}

/// The phone number in a TEL value: trimmed, `tel:` scheme and URI parameters removed.
fn tel_value(value: &str) -> Option<String> {
    let value = value.trim();
    let scheme = value.get(..4).filter(|s| s.eq_ignore_ascii_case("tel:"));
    let number = match scheme {
        Some(_) => {
            let rest = &value[4..];
            rest.split(';').next().unwrap_or(rest)
        }
        None => value,
    };
    non_empty(number.trim().to_owned())
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    if t.is_empty() {
        None
    } else if t.len() == s.len() {
        Some(s)
    } else {
        Some(t.to_owned())
    }
}

fn quoted(s: &str) -> String {
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

    fn card(line: usize, name: Option<&str>, phones: &[&str]) -> Card {
        Card {
            line,
            name: name.map(str::to_owned),
            phones: phones.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn vcard_30_with_folding_and_two_tels() {
        let text = "BEGIN:VCARD\r\n\
                    VERSION:3.0\r\n\
                    N:Sharma;Priya;;;\r\n\
                    FN:Priya\r\n \x20Sharma\r\n\
                    TEL;TYPE=CELL,VOICE:+91 98123\r\n\t45678\r\n\
                    TEL;TYPE=HOME:+1 (415) 555-2671\r\n\
                    EMAIL:priya@example.com\r\n\
                    END:VCARD\r\n";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.errors, vec![]);
        assert_eq!(
            f.cards,
            vec![card(
                1,
                Some("Priya Sharma"),
                &["+91 9812345678", "+1 (415) 555-2671"]
            )]
        );
    }

    #[test]
    fn vcard_40_with_uris_groups_and_lowercase() {
        let text = "begin:vcard\n\
                    version:4.0\n\
                    fn:John Q. Public\\, Esq.\n\
                    TEL;VALUE=uri;TYPE=\"voice,cell\";PREF=1:tel:+1-555-555-5555;ext=102\n\
                    item1.TEL;type=pref:TEL:+44 20 7946 0958\n\
                    item1.X-ABLabel:work\n\
                    end:vcard\n";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.errors, vec![]);
        assert_eq!(
            f.cards,
            vec![card(
                1,
                Some("John Q. Public, Esq."),
                &["+1-555-555-5555", "+44 20 7946 0958"]
            )]
        );
    }

    #[test]
    fn name_from_n_when_no_fn_and_unescaping() {
        let text = "BEGIN:VCARD\nVERSION:3.0\nN:O\\;Brien;Se\\,án;;Dr.;\nTEL:+353 1 234 5678\nEND:VCARD\n\
                    BEGIN:VCARD\nVERSION:3.0\nN:;Cher;;;\nTEL:+1 415 555 2671\nEND:VCARD\n\
                    BEGIN:VCARD\nVERSION:3.0\nN:;;;;\nFN:\nTEL:+1 415 555 2672\nEND:VCARD\n\
                    BEGIN:VCARD\nVERSION:4.0\nFN:Line\\none\\\\two\nTEL:+1 415 555 2673\nEND:VCARD\n";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.errors, vec![]);
        let names: Vec<_> = f.cards.iter().map(|c| c.name.as_deref()).collect();
        assert_eq!(
            names,
            vec![
                Some("Se,án O;Brien"),
                Some("Cher"),
                None,
                Some("Line\none\\two")
            ]
        );
        let lines: Vec<_> = f.cards.iter().map(|c| c.line).collect();
        assert_eq!(lines, vec![1, 6, 11, 17]);
    }

    #[test]
    fn malformed_cards_among_good_ones() {
        let text = "\
BEGIN:VCARD
VERSION:3.0
FN:Good One
TEL:+91 98123 45678
END:VCARD
BEGIN:VCARD
VERSION:3.0
FN:No Phone
EMAIL:x@example.com
END:VCARD
BEGIN:VCARD
FN:No Version
TEL:+1 415 555 2671
END:VCARD
BEGIN:VCARD
VERSION:5.0
FN:Future
TEL:+1 415 555 2671
END:VCARD
BEGIN:VCARD
VERSION:3.0
FN:Unclosed
TEL:+1 415 555 2671
BEGIN:VCARD
VERSION:4.0
FN:Good Two
TEL:+44 20 7946 0958
END:VCARD
END:VCARD
BEGIN:VCARD
VERSION:3.0
FN:Truncated
TEL:+1 415 555 2671
";
        let f = parse_vcards(text).unwrap();
        assert_eq!(
            f.cards,
            vec![
                card(1, Some("Good One"), &["+91 98123 45678"]),
                card(24, Some("Good Two"), &["+44 20 7946 0958"]),
            ]
        );
        let errors: Vec<_> = f
            .errors
            .iter()
            .map(|e| (e.line, e.reason.as_str()))
            .collect();
        assert_eq!(
            errors,
            vec![
                (6, "card has no TEL (phone number)"),
                (
                    11,
                    "card has no VERSION (expected VERSION:3.0 or VERSION:4.0)"
                ),
                (
                    15,
                    "unsupported vCard version \"5.0\" (expected 3.0 or 4.0; 2.1 is also read)"
                ),
                (20, "BEGIN:VCARD on line 24 before this card's END:VCARD"),
                (29, "END:VCARD without BEGIN:VCARD"),
                (30, "card is not closed (missing END:VCARD)"),
            ]
        );
    }

    #[test]
    fn vcard_21_android_export() {
        let text = "BEGIN:VCARD\r\n\
                    VERSION:2.1\r\n\
                    N;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:=E0=A4=B6=E0=A4=B0=E0=A5=8D=E0=A4=AE=E0=A4=BE;=E0=A4=AA=E0=A5=8D=E0=A4=B0=E0=A4=BF=\r\n\
                    =E0=A4=AF=E0=A4=BE;;;\r\n\
                    TEL;CELL;PREF:+919812345678\r\n\
                    NOTE;QUOTED-PRINTABLE:caf=E9 au lait=\r\n\
                    =0Anext\r\n\
                    PHOTO;ENCODING=BASE64;JPEG:/9j/4AAQ\r\n\
                    AAAAAAAA\r\n\
                    \r\n\
                    END:VCARD\r\n";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.errors, vec![]);
        assert_eq!(
            f.cards,
            vec![card(1, Some("प्रिया शर्मा"), &["+919812345678"])]
        );
    }

    #[test]
    fn dangling_soft_break_does_not_swallow_end() {
        let text = "BEGIN:VCARD\nVERSION:2.1\nTEL:+1 415 555 2671\nNOTE;QUOTED-PRINTABLE:oops=\nEND:VCARD\n";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.errors, vec![]);
        assert_eq!(f.cards, vec![card(1, None, &["+1 415 555 2671"])]);
    }

    #[test]
    fn stray_ends_count_toward_the_cap() {
        let text = format!("BEGIN:VCARD\n{}", "END:VCARD\n".repeat(MAX_CARDS + 1));
        assert_eq!(
            parse_vcards(&text),
            Err(VcardError::TooManyCards { max: MAX_CARDS })
        );
    }

    #[test]
    fn latin1_quoted_printable() {
        let text = "BEGIN:VCARD\nVERSION:2.1\nFN;CHARSET=ISO-8859-1;ENCODING=QUOTED-PRINTABLE:Jos=E9\nTEL:+34 912 345 678\nEND:VCARD\n";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.cards[0].name.as_deref(), Some("José"));
    }

    #[test]
    fn bom_and_blank_tels() {
        let text = "\u{FEFF}BEGIN:VCARD\nVERSION:3.0\nFN:A\nTEL:\nTEL: tel:  \nTEL:  +1 415 555 2671  \nEND:VCARD";
        let f = parse_vcards(text).unwrap();
        assert_eq!(f.cards, vec![card(1, Some("A"), &["+1 415 555 2671"])]);
    }

    #[test]
    fn no_vcard_at_all() {
        for text in [
            "",
            "   \n\n",
            "name,phone\nA,+1 415 555 2671\n",
            "\u{89}PNG\r\n\u{1a}\n",
        ] {
            assert_eq!(parse_vcards(text), Err(VcardError::NoVcard), "{text:?}");
        }
        assert_eq!(
            VcardError::NoVcard.to_string(),
            "no vCard found (expected BEGIN:VCARD)"
        );
        // A stray END alone still means there is no vCard.
        assert_eq!(parse_vcards("END:VCARD\n"), Err(VcardError::NoVcard));
    }

    #[test]
    fn too_many_cards() {
        let one = "BEGIN:VCARD\nVERSION:3.0\nTEL:+1 415 555 2671\nEND:VCARD\n";
        let ok = one.repeat(MAX_CARDS);
        assert_eq!(parse_vcards(&ok).unwrap().cards.len(), MAX_CARDS);
        let too_many = one.repeat(MAX_CARDS + 1);
        let e = parse_vcards(&too_many).unwrap_err();
        assert_eq!(e, VcardError::TooManyCards { max: MAX_CARDS });
        assert_eq!(
            e.to_string(),
            "too many vCards: more than 100000 in one file"
        );
    }

    #[test]
    fn long_version_value_is_quoted_briefly() {
        let v = "9".repeat(500);
        let text = format!("BEGIN:VCARD\nVERSION:{v}\nTEL:+1\nEND:VCARD\n");
        let f = parse_vcards(&text).unwrap();
        assert!(f.errors[0].reason.len() < 120, "{}", f.errors[0].reason);
    }

    #[test]
    fn helpers() {
        assert_eq!(unescape("a\\"), "a\\");
        assert_eq!(unescape("a\\qb"), "a\\qb");
        assert_eq!(decode_quoted_printable("=4"), b"=4");
        assert_eq!(decode_quoted_printable("=ZZ="), b"=ZZ=");
        assert_eq!(decode_quoted_printable("=é"), "=é".as_bytes());
        assert_eq!(tel_value("TEL:+1;ext=2").as_deref(), Some("+1"));
        assert_eq!(tel_value("té"), Some("té".to_owned()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = parse_vcards(&s);
        }

        #[test]
        fn vcard_like_text_never_panics(
            lines in prop::collection::vec(
                prop_oneof![
                    Just("BEGIN:VCARD".to_owned()),
                    Just("END:VCARD".to_owned()),
                    Just("VERSION:3.0".to_owned()),
                    Just("VERSION:2.1".to_owned()),
                    "[A-Za-z0-9.;=:\"\\\\ \t,é-]{0,30}",
                    "TEL[;A-Z=\"]{0,8}:[ -~]{0,20}",
                    "N;ENCODING=QUOTED-PRINTABLE:[=0-9A-Fé]{0,20}",
                ],
                0..30,
            ),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            if let Ok(f) = parse_vcards(&text) {
                for c in &f.cards {
                    prop_assert!(!c.phones.is_empty());
                    prop_assert!(c.line >= 1);
                }
            }
        }
    }
}
