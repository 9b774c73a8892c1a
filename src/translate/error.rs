//! Error type shared by every translation direction.
//!
//! The gateway only needs to know *which HTTP status* to answer with and a message that is safe
//! to show to the caller, so the error is a flat struct with a coarse `kind` rather than a deep
//! enum of parser internals.

use std::fmt;

/// Coarse classification of a translation failure; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TranslateErrorKind {
    /// Syntax error / not well-formed input (HTTP 400).
    Malformed,
    /// A configured limit was exceeded (HTTP 413).
    TooLarge,
    /// Well-formed but refused by policy: DOCTYPE, foreign encodings, not a SOAP envelope (HTTP 415).
    Unsupported,
    /// Well-formed but does not fit the mapping (undeclared repeats, bad JSON keys, ...) (HTTP 422).
    Invalid,
}

impl TranslateErrorKind {
    /// The HTTP status code the gateway should answer with.
    pub fn http_status(self) -> u16 {
        match self {
            TranslateErrorKind::Malformed => 400,
            TranslateErrorKind::TooLarge => 413,
            TranslateErrorKind::Unsupported => 415,
            TranslateErrorKind::Invalid => 422,
        }
    }
}

/// Location of an error in the input document. `line` and `column` are 1-based, `column`
/// counts Unicode scalar values, `offset` is a 0-based byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
}

impl Position {
    /// Computes line/column for `offset` in `input`. Only called on the error path, so a
    /// linear scan is fine and keeps the hot path free of line bookkeeping.
    pub fn compute(input: &[u8], offset: usize) -> Position {
        let offset = offset.min(input.len());
        let before = &input[..offset];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        // Count UTF-8 lead bytes so the column is in characters even for Vietnamese text.
        let column = 1 + before[line_start..]
            .iter()
            .filter(|&&b| (b & 0xC0) != 0x80)
            .count();
        Position {
            line,
            column,
            offset,
        }
    }
}

/// A translation failure. `position` is set for errors found while reading input text,
/// `path` (a JSON-pointer-like or element path) when the error is about structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.kind, .message, .position, .path))]
pub struct TranslateError {
    kind: TranslateErrorKind,
    message: String,
    position: Option<Position>,
    path: Option<String>,
}

fn render(
    kind: &TranslateErrorKind,
    message: &str,
    position: &Option<Position>,
    path: &Option<String>,
) -> String {
    let mut s = format!("{kind:?}: {message}");
    if let Some(p) = position {
        s.push_str(&format!(
            " (line {}, column {}, byte {})",
            p.line, p.column, p.offset
        ));
    }
    if let Some(path) = path {
        s.push_str(&format!(" at {path}"));
    }
    s
}

impl TranslateError {
    pub fn new(kind: TranslateErrorKind, message: impl Into<String>) -> Self {
        TranslateError {
            kind,
            message: message.into(),
            position: None,
            path: None,
        }
    }

    pub(crate) fn at(mut self, input: &[u8], offset: usize) -> Self {
        self.position = Some(Position::compute(input, offset));
        self
    }

    pub(crate) fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn kind(&self) -> TranslateErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn position(&self) -> Option<Position> {
        self.position
    }

    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }
}

pub(crate) fn malformed(msg: impl Into<String>) -> TranslateError {
    TranslateError::new(TranslateErrorKind::Malformed, msg)
}

pub(crate) fn too_large(msg: impl Into<String>) -> TranslateError {
    TranslateError::new(TranslateErrorKind::TooLarge, msg)
}

pub(crate) fn unsupported(msg: impl Into<String>) -> TranslateError {
    TranslateError::new(TranslateErrorKind::Unsupported, msg)
}

pub(crate) fn invalid(msg: impl Into<String>) -> TranslateError {
    TranslateError::new(TranslateErrorKind::Invalid, msg)
}

impl fmt::Display for TranslateErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
