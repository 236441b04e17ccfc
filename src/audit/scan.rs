//! Strict parser for one audit line. It accepts exactly the serialisation that
//! `format` produces: the top-level, `actor` and `key` fields in fixed order, no
//! whitespace between tokens, integers only, no unknown fields and no duplicate keys
//! at any depth. It borrows from the line and allocates only for escaped or numerous
//! `detail` keys.

use std::borrow::Cow;
use std::collections::HashSet;

use super::format::{H_FIELD, Outcome, is_lower_hex, is_valid_event};
use crate::model::KeyState;

const TOP_FIELDS: [&str; 12] = [
    "v", "seq", "ts", "run", "domain", "event", "actor", "key", "outcome", "detail", "prev", "h",
];
const ACTOR_FIELDS: [&str; 4] = ["user", "uid", "host", "pid"];
const KEY_FIELDS: [&str; 4] = ["version", "id", "label", "state"];

/// Deepest nesting of objects and lists that `detail` may have.
const MAX_DEPTH: usize = 32;

/// Number of keys in one object above which duplicates are found with a hash set
/// instead of a linear search.
const LINEAR_KEY_LIMIT: usize = 32;

/// Bytes that end the plain run of a JSON string: the closing quote, a backslash and
/// control characters.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Fields of a parsed line that the chain checks need.
#[derive(Debug)]
pub(crate) struct ParsedLine<'a> {
    pub seq: u64,
    pub event: &'a str,
    pub domain: &'a str,
    /// Raw bytes of the `detail` object.
    pub detail: &'a str,
    pub prev: &'a str,
    pub h: &'a str,
    /// Length of the hashed part: the bytes before `,"h":`.
    pub hashed_len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub pos: usize,
    pub reason: String,
}

/// Parses one line, given without its newline.
pub(crate) fn parse_line(line: &[u8]) -> Result<ParsedLine<'_>, ParseError> {
    let text = std::str::from_utf8(line).map_err(|e| ParseError {
        pos: e.valid_up_to(),
        reason: "invalid UTF-8".to_owned(),
    })?;
    let mut s = Scanner {
        text,
        b: line,
        pos: 0,
        keys: Vec::new(),
    };
    s.parse_top()
}

/// Reads the `seq` of a line that failed to parse, for error messages, when the line
/// starts like a valid one.
pub(crate) fn peek_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"v\":1,\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Keys of the `detail` objects being parsed, innermost last.
    keys: Vec<Cow<'a, str>>,
}

impl<'a> Scanner<'a> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            pos: self.pos,
            reason: reason.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn expect_byte(&mut self, byte: u8, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected {what}"))
        }
    }

    fn parse_top(&mut self) -> Result<ParsedLine<'a>, ParseError> {
        self.field(b'{', &TOP_FIELDS, 0)?;
        if self.uint()? != 1 {
            return self.fail("unsupported format version (expected v 1)");
        }
        self.field(b',', &TOP_FIELDS, 1)?;
        let seq = self.uint()?;
        self.field(b',', &TOP_FIELDS, 2)?;
        self.timestamp()?;
        self.field(b',', &TOP_FIELDS, 3)?;
        self.string()?;
        self.field(b',', &TOP_FIELDS, 4)?;
        let domain = self.string()?.0;
        self.field(b',', &TOP_FIELDS, 5)?;
        let event = self.event()?;
        self.field(b',', &TOP_FIELDS, 6)?;
        self.actor()?;
        self.field(b',', &TOP_FIELDS, 7)?;
        self.key()?;
        self.field(b',', &TOP_FIELDS, 8)?;
        self.outcome()?;
        self.field(b',', &TOP_FIELDS, 9)?;
        let detail_start = self.pos;
        self.object(0)?;
        let detail = &self.text[detail_start..self.pos];
        self.field(b',', &TOP_FIELDS, 10)?;
        let prev = self.hex_string(64, "prev")?;

        let hashed_len = self.pos;
        if !self.b[self.pos..].starts_with(H_FIELD) {
            // Names the unexpected field when there is one.
            self.field(b',', &TOP_FIELDS, 11)?;
            return self.fail("expected field \"h\"");
        }
        self.pos += H_FIELD.len() - 1;
        let h = self.hex_string(64, "h")?;
        self.expect_byte(b'}', "'}' after field \"h\"")?;
        if self.pos != self.b.len() {
            return self.fail("unexpected data after the closing '}'");
        }
        Ok(ParsedLine {
            seq,
            event,
            domain,
            detail,
            prev,
            h,
            hashed_len,
        })
    }

    /// Reads `<sep>"<name>":` where `name` is `fields[index]`, and otherwise reports
    /// whether the key found is unknown, repeated or out of order.
    fn field(&mut self, sep: u8, fields: &[&str], index: usize) -> Result<(), ParseError> {
        let name = fields[index];
        let expected = |sep: u8| format!("expected '{}' before field \"{name}\"", sep as char);
        if self.peek() != Some(sep) {
            if sep == b',' && self.peek() == Some(b'}') {
                return self.fail(format!("missing field \"{name}\""));
            }
            return self.fail(expected(sep));
        }
        self.pos += 1;
        let rest = &self.b[self.pos..];
        let n = name.len();
        if rest.len() > n + 2
            && rest[0] == b'"'
            && &rest[1..=n] == name.as_bytes()
            && rest[n + 1] == b'"'
        {
            self.pos += n + 2;
            return self.expect_byte(b':', "':' after a key");
        }

        let key_pos = self.pos;
        let (raw, escaped) = self.string()?;
        let key = decode(raw, escaped);
        self.pos = key_pos;
        match fields.iter().position(|f| *f == key) {
            Some(i) if i < index => self.fail(format!("duplicate field \"{key}\"")),
            Some(_) => self.fail(format!(
                "field \"{key}\" out of order (expected \"{name}\")"
            )),
            None => self.fail(format!("unknown field \"{key}\" (expected \"{name}\")")),
        }
    }

    /// Reads a JSON string. Returns its raw contents and whether they hold escapes.
    fn string(&mut self) -> Result<(&'a str, bool), ParseError> {
        self.expect_byte(b'"', "a string")?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = &self.b[self.pos..];
            let Some(n) = rest.iter().position(|&c| STRING_STOP[usize::from(c)]) else {
                self.pos = self.b.len();
                return self.fail("unterminated string");
            };
            self.pos += n;
            match self.b[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok((&self.text[start..self.pos - 1], escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                _ => return self.fail("control character in string"),
            }
        }
    }

    /// Reads one escape sequence starting at the backslash.
    fn escape(&mut self) -> Result<(), ParseError> {
        self.pos += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        if !self.b[self.pos..].starts_with(b"\\u") {
                            return self.fail("unpaired surrogate in \\u escape");
                        }
                        self.pos += 1;
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => self.fail("unpaired surrogate in \\u escape"),
                        }
                    }
                    0xDC00..=0xDFFF => self.fail("unpaired surrogate in \\u escape"),
                    _ => Ok(()),
                }
            }
            _ => self.fail("invalid escape in string"),
        }
    }

    /// Reads `uXXXX` and returns the code unit.
    fn hex4(&mut self) -> Result<u16, ParseError> {
        self.pos += 1;
        let digits = self.b.get(self.pos..self.pos + 4);
        match digits
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u16::from_str_radix(d, 16).ok())
        {
            Some(unit) if digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) => {
                self.pos += 4;
                Ok(unit)
            }
            _ => self.fail("invalid \\u escape"),
        }
    }

    fn hex_string(&mut self, len: usize, name: &str) -> Result<&'a str, ParseError> {
        let (raw, _) = self.string()?;
        if !is_lower_hex(raw.as_bytes(), len) {
            self.pos -= raw.len() + 1;
            return self.fail(format!("\"{name}\" must be {len} lowercase hex digits"));
        }
        Ok(raw)
    }

    /// Reads a non-negative integer without sign, fraction, exponent or leading zeros.
    fn uint(&mut self) -> Result<u64, ParseError> {
        let start = self.pos;
        let digits = self.b[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return self.fail("expected an unsigned integer");
        }
        if digits > 1 && self.b[start] == b'0' {
            return self.fail("integer with a leading zero");
        }
        self.pos += digits;
        self.reject_fraction()?;
        let mut value: u64 = 0;
        for &d in &self.b[start..self.pos] {
            value = match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
            {
                Some(v) => v,
                None => {
                    self.pos = start;
                    return self.fail("integer out of range");
                }
            };
        }
        Ok(value)
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let start = self.pos;
        let value = self.uint()?;
        u32::try_from(value).or_else(|_| {
            self.pos = start;
            self.fail("integer out of range for u32")
        })
    }

    /// Reads an integer in the range of i64 or u64.
    fn int(&mut self) -> Result<(), ParseError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
            let start = self.pos;
            let magnitude = self.uint()?;
            if magnitude == 0 || magnitude > 1u64 << 63 {
                self.pos = start;
                return self.fail("integer out of range or negative zero");
            }
            Ok(())
        } else {
            self.uint().map(|_| ())
        }
    }

    fn reject_fraction(&self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'.' | b'e' | b'E') => self.fail("floating-point numbers are not allowed"),
            _ => Ok(()),
        }
    }

    /// Reads `ts`: `YYYY-MM-DDTHH:MM:SS.ffffffZ`, a valid UTC date and time.
    fn timestamp(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        let (raw, _) = self.string()?;
        let b = raw.as_bytes();
        const PATTERN: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
        let shape_ok = b.len() == PATTERN.len()
            && b.iter().zip(PATTERN).all(|(c, p)| match p {
                b'd' => c.is_ascii_digit(),
                _ => c == p,
            });
        let num = |range: std::ops::Range<usize>| -> u32 {
            b[range]
                .iter()
                .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
        };
        let valid = shape_ok
            && chrono::NaiveDate::from_ymd_opt(num(0..4) as i32, num(5..7), num(8..10)).is_some()
            && num(11..13) < 24
            && num(14..16) < 60
            && num(17..19) <= 60;
        if !valid {
            self.pos = start;
            return self.fail("\"ts\" must be a UTC time like 2026-12-04T10:00:00.000000Z");
        }
        Ok(())
    }

    fn event(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos;
        let (raw, _) = self.string()?;
        if !is_valid_event(raw.as_bytes()) {
            self.pos = start;
            return self.fail("invalid event name");
        }
        Ok(raw)
    }

    fn outcome(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        let (raw, _) = self.string()?;
        if !Outcome::ALL.iter().any(|o| o.as_str() == raw) {
            self.pos = start;
            return self.fail(format!("unknown outcome {raw:?}"));
        }
        Ok(())
    }

    fn actor(&mut self) -> Result<(), ParseError> {
        self.field(b'{', &ACTOR_FIELDS, 0)?;
        self.string()?;
        self.field(b',', &ACTOR_FIELDS, 1)?;
        self.u32()?;
        self.field(b',', &ACTOR_FIELDS, 2)?;
        self.string()?;
        self.field(b',', &ACTOR_FIELDS, 3)?;
        self.u32()?;
        self.expect_byte(b'}', "'}' after actor field \"pid\"")
    }

    /// Reads `key`: `{}` or all of version, id, label and state.
    fn key(&mut self) -> Result<(), ParseError> {
        if self.b[self.pos..].starts_with(b"{}") {
            self.pos += 2;
            return Ok(());
        }
        self.field(b'{', &KEY_FIELDS, 0)?;
        self.u32()?;
        self.field(b',', &KEY_FIELDS, 1)?;
        self.hex_string(32, "id")?;
        self.field(b',', &KEY_FIELDS, 2)?;
        self.string()?;
        self.field(b',', &KEY_FIELDS, 3)?;
        let start = self.pos;
        let (raw, _) = self.string()?;
        if raw.parse::<KeyState>().is_err() {
            self.pos = start;
            return self.fail(format!("unknown key state {raw:?}"));
        }
        self.expect_byte(b'}', "'}' after key field \"state\"")
    }

    fn value(&mut self, depth: usize) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.int(),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.list(depth + 1),
            Some(b't') => self.keyword(b"true"),
            Some(b'f') => self.keyword(b"false"),
            Some(b'n') => self.fail("null is not allowed"),
            _ => self.fail("expected a value"),
        }
    }

    fn keyword(&mut self, word: &[u8]) -> Result<(), ParseError> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.fail("expected a value")
        }
    }

    fn list(&mut self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nesting deeper than {MAX_DEPTH}"));
        }
        self.pos += 1;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }

    /// Reads an object of unique keys.
    fn object(&mut self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nesting deeper than {MAX_DEPTH}"));
        }
        self.expect_byte(b'{', "an object")?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let first_key = self.keys.len();
        let mut seen: Option<HashSet<Cow<'a, str>>> = None;
        loop {
            let key_pos = self.pos;
            let (raw, escaped) = self.string()?;
            let key = decode(raw, escaped);
            let duplicate = match &mut seen {
                Some(set) => !set.insert(key.clone()),
                None => {
                    let dup = self.keys[first_key..].contains(&key);
                    if !dup && self.keys.len() - first_key >= LINEAR_KEY_LIMIT {
                        seen = Some(self.keys[first_key..].iter().cloned().collect());
                        seen.as_mut().map(|s| s.insert(key.clone()));
                    }
                    dup
                }
            };
            if duplicate {
                self.pos = key_pos;
                return self.fail(format!("duplicate key \"{key}\""));
            }
            self.keys.push(key);
            self.expect_byte(b':', "':' after a key")?;
            self.value(depth)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.keys.truncate(first_key);
                    return Ok(());
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }
}

/// Decodes a string's raw contents, which the scanner has already validated.
fn decode(raw: &str, escaped: bool) -> Cow<'_, str> {
    if !escaped {
        return Cow::Borrowed(raw);
    }
    let quoted = format!("\"{raw}\"");
    Cow::Owned(serde_json::from_str(&quoted).expect("scanner validated the escapes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn line(detail: &str) -> String {
        format!(
            "{{\"v\":1,\"seq\":3,\"ts\":\"2026-12-04T10:00:00.000000Z\",\"run\":\"r\",\
             \"domain\":\"d\",\"event\":\"rotation.started\",\"actor\":{{\"user\":\"u\",\
             \"uid\":1,\"host\":\"h\",\"pid\":2}},\"key\":{{}},\"outcome\":\"ok\",\
             \"detail\":{detail},\"prev\":\"{HASH}\",\"h\":\"{HASH}\"}}"
        )
    }

    fn reason(text: &str) -> String {
        parse_line(text.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn parse_accepts_writer_shape() {
        let text = line(r#"{"a":"x","b":-5,"c":{"d":[1,true,"\u00e9"]}}"#);
        let parsed = parse_line(text.as_bytes()).unwrap();
        assert_eq!(parsed.seq, 3);
        assert_eq!(parsed.event, "rotation.started");
        assert_eq!(
            parsed.detail,
            r#"{"a":"x","b":-5,"c":{"d":[1,true,"\u00e9"]}}"#
        );
        assert_eq!(&text[parsed.hashed_len..parsed.hashed_len + 5], ",\"h\":");
    }

    #[test]
    fn parse_rejects_duplicate_detail_keys() {
        assert!(reason(&line(r#"{"a":1,"a":2}"#)).contains("duplicate key \"a\""));
        assert!(reason(&line(r#"{"a":1,"\u0061":2}"#)).contains("duplicate key"));
        assert!(reason(&line(r#"{"x":{"b":1,"b":1}}"#)).contains("duplicate key \"b\""));
    }

    #[test]
    fn parse_finds_duplicates_in_large_objects() {
        let mut keys: Vec<String> = (0..100).map(|i| format!("\"k{i}\":1")).collect();
        keys.push("\"k70\":2".to_owned());
        let detail = format!("{{{}}}", keys.join(","));
        assert!(reason(&line(&detail)).contains("duplicate key \"k70\""));
    }

    #[test]
    fn parse_allows_same_key_in_sibling_objects() {
        let text = line(r#"{"a":{"x":1},"b":{"x":1}}"#);
        assert!(parse_line(text.as_bytes()).is_ok());
    }

    #[test]
    fn parse_rejects_floats_and_null() {
        assert!(reason(&line(r#"{"a":1.5}"#)).contains("floating-point"));
        assert!(reason(&line(r#"{"a":1e3}"#)).contains("floating-point"));
        assert!(reason(&line(r#"{"a":null}"#)).contains("null"));
        assert!(reason(&line(r#"{"a":01}"#)).contains("leading zero"));
    }

    #[test]
    fn parse_rejects_unknown_and_duplicate_fields() {
        let text = line("{}").replace(",\"run\":", ",\"extra\":1,\"run\":");
        assert!(reason(&text).contains("unknown field \"extra\""));
        let text = line("{}").replace(",\"run\":", ",\"seq\":3,\"run\":");
        assert!(reason(&text).contains("duplicate field \"seq\""));
        let text = line("{}").replace("\"pid\":2", "\"pid\":2,\"x\":1");
        assert!(reason(&text).contains("'}' after actor"));
    }

    #[test]
    fn parse_rejects_bad_strings_and_whitespace() {
        assert!(reason(&line("{\"a\":\"\\ud800\"}")).contains("surrogate"));
        assert!(reason(&line("{\"a\":\"\\q\"}")).contains("invalid escape"));
        assert!(reason(&line("{\"a\":\"\t\"}")).contains("control character"));
        assert!(reason(&line("{ \"a\":1}")).contains("a string"));
        assert!(
            parse_line(b"{\"v\":1,\xff}")
                .unwrap_err()
                .reason
                .contains("UTF-8")
        );
    }

    #[test]
    fn parse_rejects_bad_timestamp() {
        let text = line("{}").replace("10:00:00.000000Z", "10:00:00.000Z");
        assert!(reason(&text).contains("\"ts\""));
        let text = line("{}").replace("2026-12-04", "2026-02-30");
        assert!(reason(&text).contains("\"ts\""));
    }

    #[test]
    fn parse_rejects_data_after_h() {
        let text = line("{}");
        let text = format!("{}{}", &text[..text.len() - 1], ",\"x\":1}");
        assert!(reason(&text).contains("'}' after field \"h\""));
    }

    #[test]
    fn peek_seq_reads_prefix() {
        assert_eq!(peek_seq(b"{\"v\":1,\"seq\":42,\"ts"), Some(42));
        assert_eq!(peek_seq(b"garbage"), None);
    }
}
