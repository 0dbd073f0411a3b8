//! Contact import from CSV: a header row with a `phone` column and optionally a
//! `name` column (case-insensitive, any order, other columns ignored).
//!
//! Spreadsheets in many locales export with `;` or tab separators; the separator is
//! taken from the header line (`,` unless the header has more `;` or tabs).
//! A bad row becomes a [`RowError`] with its line number and the other rows still
//! import; only a file without a usable header (or absurdly many rows) fails as a whole.

/// Most data rows (good or bad) one file may hold.
pub const MAX_ROWS: usize = 100_000;

/// How much of a bad value error messages quote.
const MAX_QUOTED_CHARS: usize = 40;

/// One contact row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based line number in the file where the row starts.
    pub line: usize,
    /// The `name` cell, trimmed; None when there is no such column or the cell is empty.
    pub name: Option<String>,
    /// The `phone` cell, trimmed, never empty. Not validated here.
    pub phone: String,
}

/// A row that was skipped, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub line: usize,
    pub reason: String,
}

/// The result of parsing a CSV file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvFile {
    pub rows: Vec<Row>,
    pub errors: Vec<RowError>,
}

/// A failure of the whole file.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CsvImportError {
    #[error("CSV file is empty (expected a header such as name,phone)")]
    Empty,
    #[error("CSV header must have a `phone` column (expected a header such as name,phone)")]
    NoPhoneColumn,
    #[error("CSV header has more than one {0:?} column (expected one name and one phone column)")]
    DuplicateColumn(String),
    #[error("too many CSV rows: more than {max} in one file")]
    TooManyRows { max: usize },
}

/// Parse a contacts CSV.
pub fn parse_csv(text: &str) -> Result<CsvFile, CsvImportError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(sniff_delimiter(text))
        .from_reader(text.as_bytes());
    let mut records = reader.records();

    let header = loop {
        match records.next() {
            None => return Err(CsvImportError::Empty),
            Some(Ok(record)) if record.iter().all(str::is_empty) => continue,
            Some(Ok(record)) => break record,
            // Cannot happen for &str input with flexible(true); treat as no header.
            Some(Err(_)) => return Err(CsvImportError::NoPhoneColumn),
        }
    };
    let phone_col = column(&header, "phone")?.ok_or(CsvImportError::NoPhoneColumn)?;
    let name_col = column(&header, "name")?;
    let width = header.len();

    let mut lines = LineCounter::new(text);
    let mut out = CsvFile::default();
    for (count, result) in records.enumerate() {
        if count >= MAX_ROWS {
            return Err(CsvImportError::TooManyRows { max: MAX_ROWS });
        }
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                out.errors.push(RowError {
                    line: e.position().map_or(0, |p| lines.line_at(p)),
                    reason: format!("unreadable CSV row: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| lines.line_at(p));
        if record.iter().all(str::is_empty) {
            // A row of empty cells (",,") is what spreadsheets write for blank lines.
            continue;
        }
        if record.len() != width {
            out.errors.push(RowError {
                line,
                reason: format!(
                    "row has {} fields but the header has {width} (expected one field per column)",
                    record.len()
                ),
            });
            continue;
        }
        let phone = record.get(phone_col).unwrap_or("");
        if phone.is_empty() {
            out.errors.push(RowError {
                line,
                reason: "phone is empty (expected a phone number such as +919812345678)".to_owned(),
            });
            continue;
        }
        let name = name_col
            .and_then(|c| record.get(c))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        out.rows.push(Row {
            line,
            name,
            phone: phone.to_owned(),
        });
    }
    Ok(out)
}

/// Index of the column named `wanted` (case-insensitive); error if it appears twice.
fn column(header: &csv::StringRecord, wanted: &str) -> Result<Option<usize>, CsvImportError> {
    let mut found = None;
    for (i, field) in header.iter().enumerate() {
        if field.eq_ignore_ascii_case(wanted) {
            if found.is_some() {
                return Err(CsvImportError::DuplicateColumn(quoted(field)));
            }
            found = Some(i);
        }
    }
    Ok(found)
}

/// `,` unless the first non-blank line has more `;` or tab characters.
fn sniff_delimiter(text: &str) -> u8 {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let count = |c: char| first.matches(c).count();
    let (commas, semis, tabs) = (count(','), count(';'), count('\t'));
    if semis > commas && semis >= tabs {
        b';'
    } else if tabs > commas && tabs > semis {
        b'\t'
    } else {
        b','
    }
}

/// Maps csv byte positions to 1-based line numbers. (`Position::line` is one short
/// after a CRLF terminator, so lines are counted from the byte offset instead.)
/// Positions arrive in increasing order, so counting is incremental.
struct LineCounter<'a> {
    text: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        LineCounter {
            text: text.as_bytes(),
            offset: 0,
            line: 1,
        }
    }

    /// The line where the record at `pos` starts: line breaks before its first
    /// character (the rest of the previous terminator, blank lines) are skipped.
    fn line_at(&mut self, pos: &csv::Position) -> usize {
        let mut start = usize::try_from(pos.byte())
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        while matches!(self.text.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        if start > self.offset {
            let newlines = self.text[self.offset..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.line += newlines;
            self.offset = start;
        }
        self.line
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

    fn row(line: usize, name: Option<&str>, phone: &str) -> Row {
        Row {
            line,
            name: name.map(str::to_owned),
            phone: phone.to_owned(),
        }
    }

    #[test]
    fn basic_with_extra_columns_any_order_and_case() {
        let text = "Email,PHONE,Name\r\n\
                    a@example.com,+91 98123 45678,Priya\r\n\
                    b@example.com, +1 (415) 555-2671 ,  Bob  \r\n";
        let f = parse_csv(text).unwrap();
        assert_eq!(f.errors, vec![]);
        assert_eq!(
            f.rows,
            vec![
                row(2, Some("Priya"), "+91 98123 45678"),
                row(3, Some("Bob"), "+1 (415) 555-2671"),
            ]
        );
    }

    #[test]
    fn quoted_fields_with_commas_quotes_and_newlines() {
        let text = "name,phone\n\
                    \"Sharma, Priya\",\"+91 98123 45678\"\n\
                    \"Multi\nLine \"\"Q\"\"\",+44 20 7946 0958\n\
                    Last,+1 415 555 2671\n";
        let f = parse_csv(text).unwrap();
        assert_eq!(f.errors, vec![]);
        assert_eq!(
            f.rows,
            vec![
                row(2, Some("Sharma, Priya"), "+91 98123 45678"),
                row(3, Some("Multi\nLine \"Q\""), "+44 20 7946 0958"),
                row(5, Some("Last"), "+1 415 555 2671"),
            ]
        );
    }

    #[test]
    fn crlf_line_numbers_with_blank_lines_and_multiline_fields() {
        let text = "name,phone\r\n\r\n\"Two\r\nLines\",+1 415 555 2671\r\n\r\n\r\nBad\r\nC,+1 415 555 2672\r\n";
        let f = parse_csv(text).unwrap();
        assert_eq!(
            f.rows,
            vec![
                row(3, Some("Two\r\nLines"), "+1 415 555 2671"),
                row(8, Some("C"), "+1 415 555 2672"),
            ]
        );
        assert_eq!(f.errors.len(), 1);
        assert_eq!(f.errors[0].line, 7);
    }

    #[test]
    fn bom_phone_only_and_no_trailing_newline() {
        let f = parse_csv("\u{FEFF}phone\n+91 98123 45678").unwrap();
        assert_eq!(f.rows, vec![row(2, None, "+91 98123 45678")]);
    }

    #[test]
    fn ragged_and_empty_phone_rows_are_row_errors() {
        let text = "name,phone,note\n\
                    Ann,+1 415 555 2671,x\n\
                    Bob,+1 415 555 2672\n\
                    Cat,,x\n\
                    \n\
                    ,,\n\
                    Dan,+1 415 555 2673,x,extra\n\
                    Eve,+1 415 555 2674,\n";
        let f = parse_csv(text).unwrap();
        assert_eq!(
            f.rows,
            vec![
                row(2, Some("Ann"), "+1 415 555 2671"),
                row(8, Some("Eve"), "+1 415 555 2674"),
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
                (
                    3,
                    "row has 2 fields but the header has 3 (expected one field per column)"
                ),
                (
                    4,
                    "phone is empty (expected a phone number such as +919812345678)"
                ),
                (
                    7,
                    "row has 4 fields but the header has 3 (expected one field per column)"
                ),
            ]
        );
    }

    #[test]
    fn empty_name_is_none() {
        let f = parse_csv("name,phone\n,+1 415 555 2671\n").unwrap();
        assert_eq!(f.rows, vec![row(2, None, "+1 415 555 2671")]);
    }

    #[test]
    fn semicolon_and_tab_separated() {
        let f = parse_csv("Name;Phone\nMüller, Jan;+49 30 123456\n").unwrap();
        assert_eq!(f.rows, vec![row(2, Some("Müller, Jan"), "+49 30 123456")]);
        let f = parse_csv("name\tphone\nA B\t+1 415 555 2671\n").unwrap();
        assert_eq!(f.rows, vec![row(2, Some("A B"), "+1 415 555 2671")]);
    }

    #[test]
    fn leading_blank_lines_before_header() {
        let f = parse_csv("\n\nname,phone\nA,+1 415 555 2671\n").unwrap();
        assert_eq!(f.rows, vec![row(4, Some("A"), "+1 415 555 2671")]);
    }

    #[test]
    fn whole_file_errors() {
        assert_eq!(parse_csv(""), Err(CsvImportError::Empty));
        assert_eq!(parse_csv("\u{FEFF}\n\n  \n"), Err(CsvImportError::Empty));
        assert_eq!(
            parse_csv("name,mobile\nA,+1 415 555 2671\n"),
            Err(CsvImportError::NoPhoneColumn)
        );
        assert_eq!(
            parse_csv("+1 415 555 2671\n"),
            Err(CsvImportError::NoPhoneColumn)
        );
        assert_eq!(
            CsvImportError::NoPhoneColumn.to_string(),
            "CSV header must have a `phone` column (expected a header such as name,phone)"
        );
        assert_eq!(
            parse_csv("phone,Phone\n1,2\n"),
            Err(CsvImportError::DuplicateColumn("Phone".into()))
        );
        assert_eq!(
            CsvImportError::Empty.to_string(),
            "CSV file is empty (expected a header such as name,phone)"
        );
    }

    #[test]
    fn header_only_has_no_rows() {
        assert_eq!(parse_csv("name,phone\n").unwrap(), CsvFile::default());
    }

    #[test]
    fn too_many_rows() {
        let mut ok = String::from("phone\n");
        ok.push_str(&"+1 415 555 2671\n".repeat(MAX_ROWS));
        assert_eq!(parse_csv(&ok).unwrap().rows.len(), MAX_ROWS);
        ok.push_str("+1 415 555 2671\n");
        assert_eq!(
            parse_csv(&ok),
            Err(CsvImportError::TooManyRows { max: MAX_ROWS })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
            let _ = parse_csv(&s);
        }

        #[test]
        fn csv_like_text_never_panics(
            body in "[a-z0-9+ ,;\t\"\r\n]{0,200}",
            header in prop::sample::select(vec!["name,phone\n", "phone;name\n", "x\tphone\n", ""]),
        ) {
            let text = format!("{header}{body}");
            if let Ok(f) = parse_csv(&text) {
                for r in &f.rows {
                    prop_assert!(!r.phone.is_empty());
                    prop_assert!(r.line >= 2);
                }
            }
        }
    }
}
