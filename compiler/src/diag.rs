//! Located diagnostics for user input: a message, the `file:line:col` it points at, a
//! rendered source snippet and a hint on how to fix it.

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::NoColor};
use std::fmt;
use std::ops::Range;

/// An error in a user's input file, with the place it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The file's name as the user gave it.
    pub file: String,
    /// The file's text.
    pub source: String,
    /// Byte range the error is about, when known.
    pub span: Option<Range<usize>>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl SourceError {
    /// A new error at `span` in `file`.
    pub fn new(file: &str, source: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        SourceError { file: file.to_owned(), source: source.to_owned(), span, message: message.into(), help: None }
    }

    /// Adds a hint on how to fix the error.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// 1-based line and column of the span's start.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        let start = self.span.as_ref()?.start.min(self.source.len());
        let before = &self.source[..start];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, col))
    }

    /// `file:line:col`, or just the file when the place is unknown.
    pub fn location(&self) -> String {
        match self.line_col() {
            Some((l, c)) => format!("{}:{l}:{c}", self.file),
            None => self.file.clone(),
        }
    }

    /// The full report: headline with location, source snippet, help.
    pub fn render(&self) -> String {
        let mut out = format!("error: {}: {}\n", self.location(), self.message);
        if let Some(span) = &self.span {
            let file = SimpleFile::new(self.file.as_str(), self.source.as_str());
            let end = span.end.min(self.source.len()).max(span.start.min(self.source.len()));
            let start = span.start.min(end);
            let diagnostic = Diagnostic::error().with_labels(vec![Label::primary((), start..end)]);
            let mut writer = NoColor::new(Vec::new());
            let config = term::Config::default();
            if term::emit(&mut writer, &config, &file, &diagnostic).is_ok() {
                let text = String::from_utf8_lossy(writer.get_ref()).into_owned();
                // The first line repeats an empty "error" headline: ours says more.
                let snippet = text.split_once('\n').map_or("", |(_, rest)| rest);
                out.push_str(snippet.trim_end());
                out.push('\n');
            }
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("  = help: {help}\n"));
        }
        out
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceError {}

/// `n` and the noun, singular when `n` is 1 ("1 rank", "4 ranks"): for messages.
pub fn quantity(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
