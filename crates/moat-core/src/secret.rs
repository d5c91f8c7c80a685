//! Secret values that never print, never serialize by accident and are wiped on drop.

use std::fmt;

use zeroize::Zeroizing;

/// A credential value, token or key.
///
/// `Debug` and `Display` print `****`; the bytes are zeroized when the value is dropped.
/// There is deliberately no `Serialize` implementation: code that must write the value
/// somewhere calls [`Secret::expose`] and owns that decision.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The real value. Every call site is a place where the secret leaves its wrapper.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("ghp_realvalue");
        assert_eq!(format!("{s}"), "****");
        assert!(!format!("{s:?}").contains("realvalue"));
        assert_eq!(s.expose(), "ghp_realvalue");
    }
}
