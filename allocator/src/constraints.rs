//! Offer constraints on agent attributes: a framework is only offered agents
//! whose attributes satisfy all of its constraints.

use stoa_proto::Attributes;

#[derive(Debug, Clone)]
pub enum Constraint {
    Exists(String),
    Equals(String, String),
    NotEquals(String, String),
    /// The attribute exists and the whole value matches the regex.
    Matches(String, regex::Regex),
}

impl Constraint {
    /// A `Matches` constraint; the pattern is anchored to the whole value.
    pub fn matches(attribute: &str, pattern: &str) -> Result<Constraint, regex::Error> {
        Ok(Constraint::Matches(
            attribute.to_string(),
            regex::Regex::new(&format!("^(?:{pattern})$"))?,
        ))
    }

    pub fn admits(&self, attrs: &Attributes) -> bool {
        match self {
            Constraint::Exists(a) => attrs.get(a).is_some(),
            Constraint::Equals(a, v) => attrs.get(a) == Some(v.as_str()),
            // Mesos semantics: an agent without the attribute is not equal.
            Constraint::NotEquals(a, v) => attrs.get(a) != Some(v.as_str()),
            Constraint::Matches(a, re) => attrs.get(a).is_some_and(|v| re.is_match(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_check_attributes() {
        let attrs: Attributes = "rack:r1;zone:eu-1".parse().expect("attributes");
        assert!(Constraint::Exists("rack".into()).admits(&attrs));
        assert!(!Constraint::Exists("gpu".into()).admits(&attrs));
        assert!(Constraint::Equals("rack".into(), "r1".into()).admits(&attrs));
        assert!(!Constraint::NotEquals("rack".into(), "r1".into()).admits(&attrs));
        assert!(Constraint::NotEquals("gpu".into(), "x".into()).admits(&attrs));
        assert!(
            Constraint::matches("zone", "eu-[0-9]")
                .expect("regex")
                .admits(&attrs)
        );
        assert!(
            !Constraint::matches("zone", "eu")
                .expect("regex")
                .admits(&attrs)
        );
    }
}
