//! Configuration errors: every problem of a configuration, each located by its field path (`rules[2].hosts[0]`),
//! as the modules log them when they refuse a configuration and `egressctl validate` prints them.

use std::fmt;

/// One configuration problem, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`; a value the message quotes (between backquotes) or a key of the path longer than
    /// [`QUOTED_MAX`] bytes is cut, so that a 10 MB value does not come back in full in every line that reports it.
    pub fn new(path: String, message: String) -> ConfigError {
        ConfigError { path: shorten(path, '.', false), message: shorten(message, '`', true) }
    }
}

/// The most of a quoted value a message repeats.
pub const QUOTED_MAX: usize = 64;

/// `text` with each part between `separator`s (only the quoted ones, every other part, when `quoted_only`) longer
/// than [`QUOTED_MAX`] cut to its start, `…` and its length.
fn shorten(text: String, separator: char, quoted_only: bool) -> String {
    let long = |(i, part): &(usize, &str)| part.len() > QUOTED_MAX && (!quoted_only || i % 2 == 1);
    if text.len() <= QUOTED_MAX || !text.split(separator).enumerate().any(|part| long(&part)) {
        return text;
    }
    let mut out = String::with_capacity(QUOTED_MAX * 4);
    for (i, part) in text.split(separator).enumerate() {
        if i > 0 {
            out.push(separator);
        }
        if long(&(i, part)) {
            // Cut to QUOTED_MAX in all, so that cutting again changes nothing.
            let tail = format!("… ({} bytes)", part.len());
            let mut end = QUOTED_MAX.saturating_sub(tail.len());
            while !part.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(part.get(..end).unwrap_or_default());
            out.push_str(&tail);
        } else {
            out.push_str(part);
        }
    }
    out
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a policy (validation does not stop at the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            write!(f, "{separator}{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
