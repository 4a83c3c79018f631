//! People and the rules every change to them obeys, shared by the RPC and
//! HTTP faces so both validate the same way and report the same errors.

/// Longest first or last name, in characters (Unicode scalar values).
pub const MAX_NAME_CHARS: usize = 100;
/// Oldest age accepted.
pub const MAX_AGE: i64 = 150;

/// A stored person: the record of the service's contract (person-api).
pub use person_api::Person;

/// A person not stored yet, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPerson {
    pub(crate) first_name: String,
    pub(crate) last_name: String,
    pub(crate) age: i64,
    pub(crate) member: bool,
}

impl NewPerson {
    /// Validates every field.
    pub fn new(
        first_name: String,
        last_name: String,
        age: i64,
        member: bool,
    ) -> Result<Self, DomainError> {
        Ok(NewPerson {
            first_name: name("first_name", first_name)?,
            last_name: name("last_name", last_name)?,
            age: age_in_range(age)?,
            member,
        })
    }
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersonChanges {
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) age: Option<i64>,
    pub(crate) member: Option<bool>,
}

impl PersonChanges {
    /// Validates the fields given.
    pub fn new(
        first_name: Option<String>,
        last_name: Option<String>,
        age: Option<i64>,
        member: Option<bool>,
    ) -> Result<Self, DomainError> {
        Ok(PersonChanges {
            first_name: first_name.map(|v| name("first_name", v)).transpose()?,
            last_name: last_name.map(|v| name("last_name", v)).transpose()?,
            age: age.map(age_in_range).transpose()?,
            member,
        })
    }

    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.first_name.is_none()
            && self.last_name.is_none()
            && self.age.is_none()
            && self.member.is_none()
    }
}

/// Which part of the table a `list` returns: ids above `after_id`, at most
/// `limit` of them, in id order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub(crate) after_id: i64,
    pub(crate) limit: Option<u32>,
}

/// Largest page a caller may ask for.
pub const MAX_PAGE: i64 = 10_000;

impl Page {
    /// Validates the paging arguments (`limit` 1 to 10,000).
    pub fn new(limit: Option<i64>, after_id: Option<i64>) -> Result<Self, DomainError> {
        let limit = match limit {
            None => None,
            Some(n) if (1..=MAX_PAGE).contains(&n) => Some(n as u32),
            Some(_) => {
                return Err(DomainError::invalid(
                    "limit",
                    format!("must be between 1 and {MAX_PAGE}"),
                ))
            }
        };
        Ok(Page {
            after_id: after_id.unwrap_or(0),
            limit,
        })
    }
}

fn name(field: &'static str, value: String) -> Result<String, DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value)
}

fn age_in_range(age: i64) -> Result<i64, DomainError> {
    if (0..=MAX_AGE).contains(&age) {
        Ok(age)
    } else {
        Err(DomainError::invalid(
            "age",
            format!("must be between 0 and {MAX_AGE}"),
        ))
    }
}

/// What can go wrong with a request about people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// No person has this id.
    #[error("no person with id {0}")]
    NotFound(i64),
    /// A field's value breaks a rule (or has the wrong type).
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The database failed; the details are in the log, not here.
    #[error("the person store is unavailable")]
    Storage,
}

impl DomainError {
    /// A validation error for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: DomainError) -> String {
        match e {
            DomainError::Invalid { field, .. } => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(NewPerson::new("Ada".into(), "Lovelace".into(), 36, true).is_ok());
        assert_eq!(
            field_of(NewPerson::new("".into(), "L".into(), 1, false).unwrap_err()),
            "first_name"
        );
        assert_eq!(
            field_of(NewPerson::new("A".into(), "   ".into(), 1, false).unwrap_err()),
            "last_name"
        );
        assert_eq!(
            field_of(NewPerson::new("A\nB".into(), "L".into(), 1, false).unwrap_err()),
            "first_name"
        );
        let longest = "é".repeat(MAX_NAME_CHARS);
        assert!(NewPerson::new(longest.clone(), "L".into(), 1, false).is_ok());
        assert_eq!(
            field_of(NewPerson::new(longest + "x", "L".into(), 1, false).unwrap_err()),
            "first_name"
        );
        assert!(NewPerson::new("李".into(), "😀 Zoë".into(), 0, false).is_ok());
    }

    #[test]
    fn ages_are_checked_at_the_boundaries() {
        assert!(NewPerson::new("A".into(), "B".into(), 0, false).is_ok());
        assert!(NewPerson::new("A".into(), "B".into(), 150, false).is_ok());
        assert_eq!(
            field_of(NewPerson::new("A".into(), "B".into(), -1, false).unwrap_err()),
            "age"
        );
        assert_eq!(
            field_of(NewPerson::new("A".into(), "B".into(), 151, false).unwrap_err()),
            "age"
        );
        assert_eq!(
            field_of(PersonChanges::new(None, None, Some(200), None).unwrap_err()),
            "age"
        );
    }

    #[test]
    fn no_changes_is_empty() {
        assert!(PersonChanges::default().is_empty());
        assert!(!PersonChanges::new(None, None, None, Some(false))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn paging_limits() {
        assert_eq!(
            Page::new(None, None).unwrap(),
            Page {
                after_id: 0,
                limit: None
            }
        );
        assert_eq!(field_of(Page::new(Some(0), None).unwrap_err()), "limit");
        assert_eq!(
            field_of(Page::new(Some(MAX_PAGE + 1), None).unwrap_err()),
            "limit"
        );
    }
}
