//! How a spec's errors are told: [`SpecError`] with the file, line and column, the layer or
//! table and field; byte offsets turned into lines and columns; the "did you mean" of a
//! misspelling (an edit distance); and serde's type errors reworded in TOML's terms.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::Source;

/// A spec that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub file: String,
    /// 1-based line and column, when the problem has a place in the text.
    pub position: Option<(usize, usize)>,
    /// What the place is: `layer "fc1.weight", field `density`` and the like.
    pub context: String,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if !self.context.is_empty() {
            write!(f, "{}: ", self.context)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// The 1-based line and column (in characters) of byte `offset` of a text, which need only
/// be valid UTF-8 before the offset.
pub fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Builds errors for one source text: turns byte offsets into line and column.
pub(super) struct Errors<'a> {
    pub(super) source: &'a Source,
}

impl Errors<'_> {
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        line_column(self.source.text.as_bytes(), offset)
    }

    pub(super) fn at(
        &self,
        span: &Range<usize>,
        context: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        SpecError {
            file: self.source.name.clone(),
            position: Some(self.position(span.start)),
            context: context.into(),
            message: message.into(),
            help: None,
        }
    }

    pub(super) fn whole(&self, message: impl Into<String>, help: Option<String>) -> SpecError {
        SpecError {
            file: self.source.name.clone(),
            position: None,
            context: String::new(),
            message: message.into(),
            help,
        }
    }
}

pub(super) fn with_help(mut error: SpecError, help: impl Into<String>) -> SpecError {
    error.help = Some(help.into());
    error
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two adjacent
/// characters (the optimal string alignment distance), so `gian` is one edit from `gain`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows i - 2, i - 1 and i of the table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j - 1] + cost)
                .min(previous[j] + 1)
                .min(current[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

pub(super) fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

/// Describes what a byte offset of the document belongs to: the layer and field, or the
/// table and field. Used to give serde's type errors a context.
pub(super) fn context_at(doc: &DeTable<'_>, offset: usize) -> String {
    let inside = |span: Range<usize>| span.start <= offset && offset < span.end.max(span.start + 1);
    for (key, value) in doc.iter() {
        let key_name: &str = key.get_ref();
        match value.get_ref() {
            DeValue::Array(entries) if key_name == "layer" => {
                for (index, entry) in entries.iter().enumerate() {
                    if let DeValue::Table(table) = entry.get_ref() {
                        let label = layer_label(table, index);
                        for (field, v) in table.iter() {
                            if inside(field.span()) || inside(v.span()) {
                                return format!("{label}, field `{}`", field.get_ref());
                            }
                        }
                        if inside(entry.span()) {
                            return label;
                        }
                    }
                }
            }
            DeValue::Table(table) => {
                for (field, v) in table.iter() {
                    if inside(field.span()) || inside(v.span()) {
                        return format!("[{key_name}], field `{}`", field.get_ref());
                    }
                }
                if inside(value.span()) || inside(key.span()) {
                    return format!("[{key_name}]");
                }
            }
            _ => {
                if inside(value.span()) || inside(key.span()) {
                    return format!("field `{key_name}`");
                }
            }
        }
    }
    String::new()
}

pub(super) fn layer_label(table: &DeTable<'_>, index: usize) -> String {
    match table.get("name").map(|v| v.get_ref()) {
        Some(DeValue::String(name)) => format!("layer \"{name}\""),
        _ => format!("[[layer]] #{}", index + 1),
    }
}

/// serde's type errors name Rust types (`expected i64`, `struct RawSparsity`); a spec's
/// author knows TOML's: integer, number (float), array, table.
pub(super) fn in_toml_terms(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: integer `")
        && let Some((number, _)) = rest.split_once("` as i128")
    {
        return format!("integer {number} is too large (at most {})", i64::MAX);
    }
    let mut text = message.to_string();
    for (rust, toml) in [
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
        ("floating point", "float"),
    ] {
        text = text.replace(rust, toml);
    }
    match text.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Distribution;
    use crate::spec::tests::{MINIMAL, parse_str};

    #[test]
    fn type_errors_speak_toml() {
        let err = parse_str("seed = 1.5\n[sparsity]\ndensity = 0.5\n").unwrap_err();
        assert!(err.message.contains("expected an integer"), "{err}");
        let err =
            parse_str("seed = 99999999999999999999\n[sparsity]\ndensity = 0.5\n").unwrap_err();
        assert!(err.message.contains("is too large"), "{err}");
        let err = parse_str("sparsity = 0.5\n").unwrap_err();
        assert!(err.message.ends_with("expected a table"), "{err}");
        let err = parse_str(&format!("{MINIMAL}density = \"0.5\"\n")).unwrap_err();
        assert!(err.message.contains("expected a number"), "{err}");
        let err = parse_str("[sparsity]\ndensity = 0.5\n[layer]\nname = 'a'\nshape = [2, 2]\n")
            .unwrap_err();
        assert!(err.help.unwrap().contains("[[layer]]"));
        let err = parse_str("[sparsity]\ndensity = 0.5\ndensity = 0.2\n").unwrap_err();
        assert!(err.message.contains("duplicate key `density`"), "{err}");
    }

    #[test]
    fn type_errors_name_the_layer_and_field() {
        let err =
            parse_str("[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [3, 3.5]\n")
                .unwrap_err();
        assert!(err.context.contains("layer \"a\", field `shape`"), "{err}");
        assert_eq!(err.position.unwrap().0, 5);
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(closest("densty", &["density", "dense"]), Some("density"));
        assert_eq!(closest("zzz", &["density", "dense"]), None);
        assert_eq!(closest("gian", &["scheme", "gain"]), Some("gain"));
        assert_eq!(closest("ekr", Distribution::NAMES), Some("erk"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}
