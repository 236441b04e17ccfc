//! The result line every command ends with on stdout, in text or JSON.
//!
//! Control-M rules match this line, so field names are stable. It never carries a
//! PIN or key material: values come from the ledger and the request only.

use serde_json::{Map, Value};

use crate::error::{self, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Outcome word and fields of one command, plus its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub outcome: String,
    pub fields: Vec<(String, String)>,
    pub code: u8,
    /// Lines for people, printed before the result line in text output.
    pub report: Vec<String>,
    /// Structured detail merged into the JSON object in JSON output.
    pub data: Map<String, Value>,
}

impl Outcome {
    pub fn new(outcome: &str) -> Outcome {
        Outcome {
            outcome: outcome.to_string(),
            fields: Vec::new(),
            code: error::code::OK,
            report: Vec::new(),
            data: Map::new(),
        }
    }

    /// Appends a field; fields print in the order they were added.
    pub fn field(mut self, name: &str, value: impl ToString) -> Outcome {
        self.fields.push((name.to_string(), value.to_string()));
        self
    }

    /// Returns a field's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Builds the result of a failed command.
    pub fn from_error(error: &Error, domain: Option<&str>, run_id: Option<&str>) -> Outcome {
        let mut outcome = Outcome::new("error").field("error", error.kind_name().to_lowercase());
        if let Some(domain) = domain {
            outcome = outcome.field("domain", domain);
        }
        if let Some(run_id) = run_id {
            outcome = outcome.field("run_id", run_id);
        }
        if let Error::Findings { outcome: found, .. } = error {
            let mut carried = (**found).clone();
            outcome.outcome = carried.outcome.clone();
            carried
                .fields
                .retain(|(name, _)| name != "run_id" && name != "domain");
            outcome.fields.extend(carried.fields);
            outcome.report = carried.report;
            outcome.data = carried.data;
        }
        if let Error::AuditInvalid(report) = error {
            if let Some(failure) = &report.failure {
                outcome = outcome
                    .field("check", failure.code)
                    .field("line", failure.line)
                    .field("unverified", report.unverified_lines);
            }
            if let Ok(value) = serde_json::to_value(report) {
                outcome.data.insert("report".into(), value);
            }
        }
        outcome.code = error::exit_code(error);
        outcome
    }

    /// Encodes the fields as `name=value` pairs for storage in the ledger.
    pub fn encode_fields(&self) -> String {
        let mut map = Map::new();
        map.insert("outcome".into(), Value::String(self.outcome.clone()));
        for (name, value) in &self.fields {
            map.insert(name.clone(), Value::String(value.clone()));
        }
        Value::Object(map).to_string()
    }

    /// Decodes what `encode_fields` stored.
    pub fn decode_fields(text: &str) -> Option<Outcome> {
        let Value::Object(map) = serde_json::from_str(text).ok()? else {
            return None;
        };
        let mut outcome = Outcome::new(map.get("outcome")?.as_str()?);
        for (name, value) in map {
            if name != "outcome" {
                outcome.fields.push((name, value.as_str()?.to_string()));
            }
        }
        Some(outcome)
    }

    /// Renders the result line, `KEYROT-RESULT outcome=… code=N` or one JSON object.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Text => {
                let mut line = String::new();
                for report_line in &self.report {
                    line.push_str(report_line);
                    line.push('\n');
                }
                line.push_str(&format!("KEYROT-RESULT outcome={}", self.outcome));
                for (name, value) in &self.fields {
                    line.push(' ');
                    line.push_str(name);
                    line.push('=');
                    line.push_str(&quote(value));
                }
                line.push_str(&format!(" code={}", self.code));
                line
            }
            OutputFormat::Json => {
                let mut map = Map::new();
                map.insert("outcome".into(), Value::String(self.outcome.clone()));
                for (name, value) in &self.fields {
                    map.insert(name.clone(), Value::String(value.clone()));
                }
                for (name, value) in &self.data {
                    map.insert(name.clone(), value.clone());
                }
                map.insert("code".into(), Value::from(self.code));
                Value::Object(map).to_string()
            }
        }
    }
}

/// Quotes a value that contains spaces, quotes or `=` so the line splits unambiguously.
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '=' && !c.is_control());
    if plain {
        value.to_string()
    } else {
        serde_json::to_string(value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_line_has_fixed_shape() {
        let outcome = Outcome::new("rotated")
            .field("domain", "payments")
            .field("version", 4)
            .field("run_id", "00012ab");
        assert_eq!(
            outcome.render(OutputFormat::Text),
            "KEYROT-RESULT outcome=rotated domain=payments version=4 run_id=00012ab code=0"
        );
    }

    #[test]
    fn values_with_spaces_are_quoted() {
        let outcome = Outcome::new("refused").field("reason", "too soon");
        assert!(
            outcome
                .render(OutputFormat::Text)
                .contains("reason=\"too soon\"")
        );
    }

    #[test]
    fn json_line_is_one_object() {
        let outcome = Outcome::new("rotated").field("domain", "payments");
        let value: Value = serde_json::from_str(&outcome.render(OutputFormat::Json)).unwrap();
        assert_eq!(value["outcome"], "rotated");
        assert_eq!(value["domain"], "payments");
        assert_eq!(value["code"], 0);
    }

    #[test]
    fn fields_round_trip_through_ledger_text() {
        let outcome = Outcome::new("rotated").field("version", 2);
        assert_eq!(
            Outcome::decode_fields(&outcome.encode_fields()),
            Some(outcome)
        );
    }
}
