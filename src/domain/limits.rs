//! Rate limits by request weight (§3.4) and their validation.

use serde::{Deserialize, Serialize};

use super::FieldError;

/// One limit: at most `limit` requests with any of `methods` per `period_seconds`, per org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateRule {
    pub methods: Vec<String>,
    pub limit: u32,
    pub period_seconds: u32,
}

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

impl RateRule {
    fn new(methods: &[&str], limit: u32, period_seconds: u32) -> Self {
        Self {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            limit,
            period_seconds,
        }
    }

    /// The ZIA defaults: GET 2/s and 1000/h; POST and PUT 1/s and 400/h; DELETE 1/min and 4/h.
    pub fn defaults() -> Vec<RateRule> {
        vec![
            Self::new(&["GET"], 2, 1),
            Self::new(&["GET"], 1000, 3600),
            Self::new(&["POST", "PUT"], 1, 1),
            Self::new(&["POST", "PUT"], 400, 3600),
            Self::new(&["DELETE"], 1, 60),
            Self::new(&["DELETE"], 4, 3600),
        ]
    }

    /// The method class a request counts under: HEAD and OPTIONS weigh as GET, PATCH as PUT.
    pub fn class_of(method: &str) -> &'static str {
        // Compared in place: this runs on every API call.
        const CLASSES: [(&str, &str); 4] = [
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("PATCH", "PUT"),
            ("DELETE", "DELETE"),
        ];
        CLASSES
            .iter()
            .find(|(m, _)| method.eq_ignore_ascii_case(m))
            .map_or("GET", |(_, class)| class)
    }

    pub fn applies_to(&self, class: &str) -> bool {
        self.methods.iter().any(|m| m == class)
    }

    pub fn validate_all(rules: Vec<RateRule>, field: &str) -> Result<Vec<RateRule>, FieldError> {
        if rules.len() > 32 {
            return Err(FieldError::new(field, "at most 32 rules"));
        }
        for (i, r) in rules.iter().enumerate() {
            let f = format!("{field}[{i}]");
            if r.methods.is_empty() {
                return Err(FieldError::new(
                    format!("{f}.methods"),
                    "must name at least one method",
                ));
            }
            if let Some(bad) = r.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
                return Err(FieldError::new(
                    format!("{f}.methods"),
                    format!("unknown method {bad:?}; use GET, POST, PUT or DELETE"),
                ));
            }
            if !(1..=1_000_000).contains(&r.limit) {
                return Err(FieldError::new(
                    format!("{f}.limit"),
                    "must be from 1 to 1000000",
                ));
            }
            if !(1..=86_400).contains(&r.period_seconds) {
                return Err(FieldError::new(
                    format!("{f}.periodSeconds"),
                    "must be from 1 to 86400",
                ));
            }
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_class() {
        let d = RateRule::defaults();
        for class in ["GET", "POST", "PUT", "DELETE"] {
            assert_eq!(
                d.iter().filter(|r| r.applies_to(class)).count(),
                2,
                "{class}"
            );
        }
        assert_eq!(RateRule::class_of("head"), "GET");
        assert_eq!(RateRule::class_of("PATCH"), "PUT");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = vec![RateRule::new(&["GET"], 0, 1)];
        assert_eq!(
            RateRule::validate_all(bad, "rateLimits").unwrap_err().field,
            "rateLimits[0].limit"
        );
        let bad = vec![RateRule::new(&["FETCH"], 1, 1)];
        assert_eq!(
            RateRule::validate_all(bad, "rateLimits").unwrap_err().field,
            "rateLimits[0].methods"
        );
    }
}
