//! Identifiers. String ids are validated on construction and on decode, so a
//! value of these types is never empty, never huge and never holds characters
//! that would break a path or a log line.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest id accepted from a peer or a user.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id must not be empty")]
    Empty,
    #[error("an id must be at most {MAX_ID_LEN} bytes, this one is {0}")]
    TooLong(usize),
    #[error("an id may hold only ASCII letters, digits and '-', '_', '.'; found {0:?}")]
    BadChar(char),
}

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        // A leading dot would let an id name a hidden or parent directory.
        None if s.starts_with('.') => Err(IdError::BadChar('.')),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(
    /// An agent, assigned by the master at first registration and kept across
    /// agent restarts.
    AgentId
);
string_id!(
    /// A framework, assigned by the master at subscription.
    FrameworkId
);
string_id!(
    /// A task, chosen by its framework; unique within that framework.
    TaskId
);

/// An offer, assigned by the master; never reused within one master run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offer-{}", self.0)
    }
}

/// One status update of one agent; the agent numbers its updates so that an
/// acknowledgement names exactly the update it confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UpdateId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_values() {
        assert_eq!(TaskId::new(""), Err(IdError::Empty));
        assert_eq!(TaskId::new("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(TaskId::new(".."), Err(IdError::BadChar('.')));
        assert!(matches!(
            TaskId::new("x".repeat(129)),
            Err(IdError::TooLong(129))
        ));
        assert_eq!(
            TaskId::new("task-1.a_b").map(|t| t.to_string()),
            Ok("task-1.a_b".into())
        );
    }

    #[test]
    fn decoding_validates() {
        let bytes = postcard::to_stdvec(&"bad id".to_string()).expect("encode");
        assert!(postcard::from_bytes::<TaskId>(&bytes).is_err());
        let bytes = postcard::to_stdvec(&"ok".to_string()).expect("encode");
        assert_eq!(
            postcard::from_bytes::<TaskId>(&bytes).ok(),
            TaskId::new("ok").ok()
        );
    }
}
