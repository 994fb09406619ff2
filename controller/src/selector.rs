//! `LabelSelector`: equality-based label selectors as in Kubernetes (`k=v,k2!=v2,k3,!k4`).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses a comma-separated list of `key=value`, `key==value`, `key!=value`, `key` and
    /// `!key` requirements; all must hold for a match.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            requirements.push(parse_requirement(part).ok_or_else(|| {
                format!("invalid label selector {text:?} at {part:?}; expected key=value, key!=value, key or !key separated by commas")
            })?);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::Equals(key, value) => labels.get(key) == Some(value),
                Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
                Requirement::Exists(key) => labels.contains_key(key),
                Requirement::NotExists(key) => !labels.contains_key(key),
            })
    }
}

fn parse_requirement(part: &str) -> Option<Requirement> {
    let valid_key = |key: &str| {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };

    if let Some((key, value)) = part.split_once("!=") {
        return valid_key(key.trim())
            .then(|| Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return valid_key(key.trim())
            .then(|| Requirement::Equals(key.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some(key) = part.strip_prefix('!') {
        return valid_key(key.trim()).then(|| Requirement::NotExists(key.trim().to_owned()));
    }
    valid_key(part).then(|| Requirement::Exists(part.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn all_requirements_must_hold() {
        let selector = LabelSelector::parse("show=weekly,tier!=free,lang,!draft").expect("valid");

        assert!(selector.matches(&labels(&[("show", "weekly"), ("lang", "en")])));
        assert!(!selector.matches(&labels(&[("show", "weekly")])));
        assert!(!selector.matches(&labels(&[
            ("show", "weekly"),
            ("lang", "en"),
            ("tier", "free")
        ])));
        assert!(!selector.matches(&labels(&[
            ("show", "weekly"),
            ("lang", "en"),
            ("draft", "1")
        ])));
    }

    #[test]
    fn malformed_selector_is_rejected() {
        let err = LabelSelector::parse("show=weekly,=x").expect_err("empty key");

        assert!(err.contains("=x"), "{err}");
    }
}
