//! What goes wrong with a spec, named by the field as clients spell it (`model.hidden`,
//! `policy.grad[0].max_norm`), and the ranges both validation and the OpenAPI schema read.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use utoipa::ToSchema;

/// A spec that could not be read, or read but is out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// Not JSON at all (or trailing bytes after it).
    #[error("malformed JSON: {0}")]
    Syntax(String),
    /// JSON, but a field is missing, unknown, of the wrong type or out of range.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// Several fields are out of range, every one the checks found (at least two), in the
    /// order they ran: the first is the one `Field` would have named.
    #[error("{}", describe_all(.0))]
    Fields(Vec<FieldError>),
}

/// One invalid field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field as a JSON path (`model.hidden`, `policy.grad[0].max_norm`).
    pub field: String,
    pub message: String,
}

/// `field: message` of the first problem, and how many more there are.
fn describe_all(all: &[FieldError]) -> String {
    match all {
        [] => "invalid spec".to_owned(),
        [one] => format!("{}: {}", one.field, one.message),
        [first, rest @ ..] => {
            let n = rest.len();
            format!("{}: {} (and {n} more invalid field{})", first.field, first.message, if n == 1 { "" } else { "s" })
        }
    }
}

impl SpecError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field { field: field.into(), message: message.into() }
    }

    /// Every invalid field this error names (none for malformed JSON).
    pub fn fields(&self) -> Vec<FieldError> {
        match self {
            Self::Syntax(_) => Vec::new(),
            Self::Field { field, message } => vec![FieldError { field: field.clone(), message: message.clone() }],
            Self::Fields(all) => all.clone(),
        }
    }

    /// The same error with each field's path and message rewritten by `f`.
    pub(crate) fn map_fields(self, mut f: impl FnMut(FieldError) -> FieldError) -> Self {
        match self {
            Self::Syntax(_) => self,
            Self::Field { field, message } => {
                let FieldError { field, message } = f(FieldError { field, message });
                Self::Field { field, message }
            }
            Self::Fields(all) => Self::Fields(all.into_iter().map(f).collect()),
        }
    }
}

/// Collects the outcome of independent checks, so that a spec's every invalid field is
/// reported at once rather than one per submission.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<FieldError>);

impl Problems {
    /// Keeps what `result` found wrong, if anything, unless a field already has a problem.
    pub(crate) fn add(&mut self, result: Result<(), SpecError>) {
        match result {
            Ok(()) => {}
            Err(SpecError::Syntax(message)) => self.0.push(FieldError { field: String::new(), message }),
            // One message per field: the first check that refused it.
            Err(err) => {
                for problem in err.fields() {
                    if !self.0.iter().any(|p| p.field == problem.field) {
                        self.0.push(problem);
                    }
                }
            }
        }
    }

    /// Ok when every check passed; else the one invalid field, or all of them.
    pub(crate) fn finish(mut self) -> Result<(), SpecError> {
        match self.0.len() {
            0 => Ok(()),
            1 => {
                let FieldError { field, message } = self.0.remove(0);
                Err(SpecError::Field { field, message })
            }
            _ => Err(SpecError::Fields(self.0)),
        }
    }
}

/// Parses `bytes` as one JSON `T`, naming the offending field on failure. Every JSON body
/// the service reads goes through here, so they all name fields the same way.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            Category::Data => {
                let message = strip_position(&inner.to_string());
                SpecError::Field { field: field_path(&path, &message), message }
            }
            Category::Syntax | Category::Eof | Category::Io => SpecError::Syntax(inner.to_string()),
        }
    })?;
    de.end().map_err(|err| SpecError::Syntax(err.to_string()))?;
    Ok(value)
}

/// serde names a missing field in its message and places the error at the enclosing
/// object; clients want the field itself. Tagged enums report an unknown tag at
/// the enum, which clients know as its `kind`.
pub(crate) fn field_path(path: &str, message: &str) -> String {
    let join = |name: &str| if path == "." { name.to_owned() } else { format!("{path}.{name}") };
    let quoted = || message.split('`').nth(1);
    if (message.starts_with("missing field") || message.starts_with("unknown field"))
        && let Some(name) = quoted()
    {
        // An unknown field is already in the path; a missing one is not.
        let last = path.rsplit('.').next().unwrap_or(path);
        return if last == name { path.to_owned() } else { join(name) };
    }
    // Tagged enums (the task, each policy) report an unknown tag at the object; a plain
    // enum field (`optimizer.schedule`) or list entry (`notify.on[0]`) reports it at the
    // field itself.
    let tagged = path == "task" || (path.starts_with("policy.") && path.ends_with(']'));
    if message.starts_with("unknown variant") && tagged {
        return join("kind");
    }
    path.to_owned()
}

fn strip_position(message: &str) -> String {
    message.find(" at line ").map_or(message, |at| &message[..at]).to_owned()
}

pub(crate) fn check(ok: bool, field: impl Into<String>, message: impl Into<String>) -> Result<(), SpecError> {
    if ok { Ok(()) } else { Err(SpecError::field(field, message)) }
}

/// An inclusive range of whole numbers a field accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ints {
    pub min: i64,
    pub max: i64,
}

impl Ints {
    pub const fn new(min: i64, max: i64) -> Self {
        Self { min, max }
    }

    pub fn contains<T: TryInto<i64>>(self, value: T) -> bool {
        value.try_into().is_ok_and(|v| (self.min..=self.max).contains(&v))
    }

    pub(crate) fn check<T: TryInto<i64>>(self, value: T, field: impl Into<String>) -> Result<(), SpecError> {
        check(self.contains(value), field, format!("must be {} to {}", self.min, self.max))
    }
}

/// A range of finite numbers a field accepts; each end open or closed, the top possibly
/// unbounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reals {
    pub min: f64,
    /// `min` itself is refused.
    pub above: bool,
    /// `f64::INFINITY` for no upper bound.
    pub max: f64,
    /// `max` itself is refused.
    pub below: bool,
}

impl Reals {
    /// `[min, max]`.
    pub const fn closed(min: f64, max: f64) -> Self {
        Self { min, above: false, max, below: false }
    }
    /// `(0, ∞)`: any finite number above 0.
    pub const POSITIVE: Self = Self { min: 0.0, above: true, max: f64::INFINITY, below: false };
    /// `[0, 1)`: a decay rate or a probability that must leave something.
    pub const FRACTION: Self = Self { min: 0.0, above: false, max: 1.0, below: true };

    pub fn contains(self, value: f64) -> bool {
        let low = if self.above { value > self.min } else { value >= self.min };
        let high = if self.below { value < self.max } else { value <= self.max };
        value.is_finite() && low && high
    }

    pub(crate) fn check(self, value: f64, field: impl Into<String>) -> Result<(), SpecError> {
        check(self.contains(value), field, self.describe())
    }

    fn describe(self) -> String {
        let low = if self.above { format!("above {}", self.min) } else { format!("at least {}", self.min) };
        if self.max.is_infinite() {
            return format!("must be a finite number {low}");
        }
        let high = if self.below { format!("below {}", self.max) } else { format!("at most {}", self.max) };
        format!("must be {low} and {high}")
    }
}

/// A bound as the schema publishes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Ints(Ints),
    Reals(Reals),
}

/// Where a bound applies: a schema in the OpenAPI components and one of its properties.
#[derive(Debug, Clone, Copy)]
pub struct Ranged {
    pub schema: &'static str,
    pub property: &'static str,
    pub bound: Bound,
}

pub(crate) const fn ints(schema: &'static str, property: &'static str, range: Ints) -> Ranged {
    Ranged { schema, property, bound: Bound::Ints(range) }
}

pub(crate) const fn reals(schema: &'static str, property: &'static str, range: Reals) -> Ranged {
    Ranged { schema, property, bound: Bound::Reals(range) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_say_what_they_accept() {
        assert!(Ints::new(1, 3).contains(3_u64));
        assert!(!Ints::new(1, 3).contains(u64::MAX));
        assert!(!Reals::POSITIVE.contains(0.0));
        assert!(!Reals::POSITIVE.contains(f64::INFINITY));
        assert!(Reals::FRACTION.contains(0.0) && !Reals::FRACTION.contains(1.0));
        assert_eq!(Reals::closed(0.0, 1.0).describe(), "must be at least 0 and at most 1");
        assert_eq!(Reals::POSITIVE.describe(), "must be a finite number above 0");
    }
}
