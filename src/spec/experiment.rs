//! An experiment: one base job spec, axes that change it (JSON paths into the spec, each
//! with the values to try), and a number of seeds. Its grid is every combination of the
//! axes' values (a cell), each run once per seed.
//!
//! [`ExperimentSpec::parse`] reads it strictly, expands the grid and checks every cell's
//! spec through [`JobSpec::parse`] before anything else sees it, so an experiment either
//! queues whole or names the cell and the field that is wrong.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{FieldError, SpecError, check, from_json};
use super::{DEFAULT_SEED, JobSpec, MAX_NAME_LEN, ValidSpec};

/// Most axes an experiment may have.
pub const MAX_AXES: usize = 8;
/// Most seeds each cell may run.
pub const MAX_SEEDS: u64 = 100;
/// Seeds each cell runs when the experiment does not say.
pub const DEFAULT_SEEDS: u64 = 3;
/// Longest axis path, in bytes.
pub const MAX_PATH_LEN: usize = 200;
/// Most parts (`task`, `seq_len`, `[0]`) an axis path may have.
pub const MAX_PATH_PARTS: usize = 16;
/// Largest list index an axis path may name.
pub const MAX_PATH_INDEX: usize = 1024;
/// Longest label of an axis value, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// An experiment as submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// A label for people; each job is named after it, its cell and its seed.
    pub name: String,
    /// The job spec every cell starts from (`POST /api/v1/jobs`'s body). Its `seed` is the
    /// first seed; the others follow it (seed, seed + 1, …).
    #[schema(value_type = JobSpec)]
    pub base: Value,
    /// What changes between cells: every combination of the axes' values is one cell,
    /// the first axis changing slowest. None: one cell, the base spec.
    #[serde(default)]
    pub axes: Vec<Axis>,
    /// Runs of each cell, each with its own seed.
    #[serde(default = "default_seeds")]
    pub seeds: u64,
    /// When a run counts as solved, and the level whose first crossing is timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
}

fn default_seeds() -> u64 {
    DEFAULT_SEEDS
}

/// One axis: a field of the spec and the values it takes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    /// A JSON path into the spec: `task.seq_len`, `policy.grad[0].max_norm` (a list
    /// entry, which the base spec must have), or `policy.grad` (whole policy lists).
    pub path: String,
    /// The values to try, each any JSON value the field takes.
    pub values: Vec<Value>,
    /// Names of the values for tables and charts, one each (default: the value itself,
    /// or its policies' kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// Which figure a threshold reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMetric {
    /// The task's validation metric (accuracy for `adding`, `copy`, `classification`).
    ValMetric,
    /// The validation loss.
    ValLoss,
    /// The training loss.
    Loss,
}

impl ThresholdMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValMetric => "val_metric",
            Self::ValLoss => "val_loss",
            Self::Loss => "loss",
        }
    }
}

/// A level of one figure: a run is solved when its final value is on the right side of
/// it, and the step where it first got there is reported. Exactly one of `at_least` and
/// `at_most`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub metric: ThresholdMetric,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
}

impl Threshold {
    /// Whether `value` meets the level (a missing value never does).
    pub fn met(&self, value: Option<f64>) -> bool {
        match (value, self.at_least, self.at_most) {
            (Some(v), Some(low), _) => v >= low,
            (Some(v), None, Some(high)) => v <= high,
            _ => false,
        }
    }

    /// `accuracy ≥ 0.9`-style text.
    pub fn describe(&self) -> String {
        match (self.at_least, self.at_most) {
            (Some(low), _) => format!("{} ≥ {low}", self.metric.as_str()),
            (None, Some(high)) => format!("{} ≤ {high}", self.metric.as_str()),
            (None, None) => self.metric.as_str().to_owned(),
        }
    }
}

/// One combination of the axes' values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CellInfo {
    /// Its place in the grid, from 0, the first axis changing slowest.
    pub index: usize,
    /// Each axis's label for its value, in axis order.
    pub labels: Vec<String>,
    /// Each axis's value, in axis order.
    pub values: Vec<Value>,
}

/// An experiment whose every cell passed [`JobSpec::parse`].
#[derive(Debug, Clone)]
pub struct ValidExperiment {
    pub spec: ExperimentSpec,
    pub cells: Vec<CellInfo>,
    /// Every job: its cell, its seed's number (0 … seeds − 1) and its spec, cell by cell.
    pub jobs: Vec<(usize, u64, ValidSpec)>,
}

impl ValidExperiment {
    /// A refusal of `cell`'s spec on `field` (a job spec path, as the budget names it) as
    /// the request's own field and a message that says which cell it was.
    pub fn cell_error(&self, cell: usize, field: &str, message: &str) -> SpecError {
        let sizes: Vec<usize> = self.spec.axes.iter().map(|a| a.values.len()).collect();
        let choice = digits(cell, &sizes);
        let labels = self.cells.get(cell).map(|c| c.labels.join(", ")).unwrap_or_default();
        let describe = if labels.is_empty() { String::new() } else { format!(" ({labels})") };
        SpecError::Field {
            field: request_field(&self.spec.axes, &choice, field),
            message: format!("cell {cell}{describe}: {field}: {message}"),
        }
    }
}

/// One part of an axis path.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Key(String),
    Index(usize),
}

impl ExperimentSpec {
    /// Reads an experiment from JSON and expands it: at most `max_jobs` jobs (cells ×
    /// seeds), every cell's spec checked. A cell's error names the request's own field
    /// (`axes[1].values[2]` when an axis value is wrong, `base.model.hidden` otherwise)
    /// and says which cell it was.
    pub fn parse(bytes: &[u8], max_jobs: u64) -> Result<ValidExperiment, SpecError> {
        let spec: ExperimentSpec = from_json(bytes)?;
        spec.expand(max_jobs)
    }

    fn expand(self, max_jobs: u64) -> Result<ValidExperiment, SpecError> {
        let name = self.name.trim();
        check(!name.is_empty(), "name", "must not be blank")?;
        check(self.name.len() <= MAX_NAME_LEN, "name", format!("at most {MAX_NAME_LEN} bytes"))?;
        check(self.base.is_object(), "base", "must be a job spec (a JSON object)")?;
        check((1..=MAX_SEEDS).contains(&self.seeds), "seeds", format!("must be 1 to {MAX_SEEDS}"))?;
        check(self.axes.len() <= MAX_AXES, "axes", format!("at most {MAX_AXES} axes"))?;
        if let Some(t) = &self.threshold {
            let given = [t.at_least, t.at_most];
            check(
                given.iter().filter(|v| v.is_some()).count() == 1,
                "threshold",
                "needs exactly one of at_least and at_most",
            )?;
            check(given.iter().flatten().all(|v| v.is_finite()), "threshold", "must be a finite number")?;
        }
        let mut paths = Vec::with_capacity(self.axes.len());
        for (a, axis) in self.axes.iter().enumerate() {
            let parts =
                parse_path(&axis.path).map_err(|message| SpecError::field(format!("axes[{a}].path"), message))?;
            for (b, earlier) in self.axes[..a].iter().enumerate() {
                check(
                    !overlaps(&earlier.path, &axis.path),
                    format!("axes[{a}].path"),
                    format!("overlaps axes[{b}].path ({}): each field may be set by one axis", earlier.path),
                )?;
            }
            check(!axis.values.is_empty(), format!("axes[{a}].values"), "needs at least one value")?;
            if !axis.labels.is_empty() {
                check(
                    axis.labels.len() == axis.values.len(),
                    format!("axes[{a}].labels"),
                    format!("needs one label per value ({}), got {}", axis.values.len(), axis.labels.len()),
                )?;
                for (l, label) in axis.labels.iter().enumerate() {
                    check(
                        !label.trim().is_empty() && label.chars().count() <= MAX_LABEL_CHARS,
                        format!("axes[{a}].labels[{l}]"),
                        format!("must be 1 to {MAX_LABEL_CHARS} characters"),
                    )?;
                }
            }
            paths.push(parts);
        }
        let cells = self.axes.iter().try_fold(1_u64, |n, axis| n.checked_mul(axis.values.len() as u64));
        let jobs = cells.and_then(|c| c.checked_mul(self.seeds));
        if jobs.is_none_or(|jobs| jobs > max_jobs) {
            let cells = cells.map_or_else(|| "too many".to_owned(), |c| c.to_string());
            let field = if self.axes.is_empty() { "seeds" } else { "axes" };
            return Err(SpecError::field(
                field,
                format!(
                    "the grid has {cells} cells × {} seeds, above this service's limit of {max_jobs} jobs per experiment: use fewer values or seeds",
                    self.seeds
                ),
            ));
        }
        let first_seed = match self.base.get("seed") {
            None => DEFAULT_SEED,
            Some(seed) => seed.as_u64().ok_or_else(|| SpecError::field("base.seed", "must be a whole number"))?,
        };
        check(first_seed.checked_add(self.seeds - 1).is_some(), "base.seed", "leaves no room for the other seeds")?;

        let sizes: Vec<usize> = self.axes.iter().map(|a| a.values.len()).collect();
        let count: usize = sizes.iter().product();
        let mut cells = Vec::with_capacity(count);
        let mut jobs = Vec::with_capacity(count * self.seeds as usize);
        for index in 0..count {
            let choice = digits(index, &sizes);
            let labels: Vec<String> = self.axes.iter().zip(&choice).map(|(axis, &v)| label(axis, v)).collect();
            let values: Vec<Value> = self.axes.iter().zip(&choice).map(|(axis, &v)| axis.values[v].clone()).collect();
            let mut base = self.base.clone();
            for (a, (parts, value)) in paths.iter().zip(&values).enumerate() {
                set(&mut base, parts, value.clone()).map_err(|message| {
                    SpecError::field(format!("axes[{a}].path"), format!("cell {index}: {message}"))
                })?;
            }
            let describe = if labels.is_empty() { String::new() } else { format!(" ({})", labels.join(", ")) };
            for k in 0..self.seeds {
                let seed = first_seed + k;
                let mut cell = base.clone();
                if let Some(object) = cell.as_object_mut() {
                    object.insert("seed".to_owned(), Value::from(seed));
                    object.insert("name".to_owned(), Value::from(job_name(name, &labels, seed)));
                }
                let valid = JobSpec::parse_value(&cell).map_err(|err| match err {
                    SpecError::Syntax(message) => SpecError::field("base", message),
                    err => err.map_fields(|FieldError { field, message }| FieldError {
                        field: request_field(&self.axes, &choice, &field),
                        message: format!("cell {index}{describe}: {field}: {message}"),
                    }),
                })?;
                jobs.push((index, k, valid));
            }
            cells.push(CellInfo { index, labels, values });
        }
        Ok(ValidExperiment { spec: self, cells, jobs })
    }
}

/// `index` in the mixed radix of `sizes`, the first digit the most significant.
fn digits(mut index: usize, sizes: &[usize]) -> Vec<usize> {
    let mut out = vec![0; sizes.len()];
    for (slot, &size) in out.iter_mut().zip(sizes).rev() {
        *slot = index % size;
        index /= size;
    }
    out
}

/// The field of the request a cell's spec error comes from: the axis value that set it,
/// or the base spec.
fn request_field(axes: &[Axis], choice: &[usize], field: &str) -> String {
    for (a, (axis, &v)) in axes.iter().zip(choice).enumerate() {
        if field == axis.path || within(&axis.path, field) {
            return format!("axes[{a}].values[{v}]");
        }
    }
    format!("base.{field}")
}

/// Whether `inner` names a field inside `outer`.
fn within(outer: &str, inner: &str) -> bool {
    inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn overlaps(a: &str, b: &str) -> bool {
    a == b || within(a, b) || within(b, a)
}

/// A job's name: the experiment's, its cell's labels and its seed, within the spec's
/// bound on names.
fn job_name(name: &str, labels: &[String], seed: u64) -> String {
    let suffix = format!(" seed {seed}");
    let mut full = name.to_owned();
    if !labels.is_empty() {
        full.push_str(&format!(" [{}]", labels.join(", ")));
    }
    let room = MAX_NAME_LEN - suffix.len();
    if full.len() > room {
        let mut end = room;
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        full.truncate(end);
    }
    full + &suffix
}

/// The label of an axis's `v`-th value: given, or made from the value.
fn label(axis: &Axis, v: usize) -> String {
    if let Some(label) = axis.labels.get(v) {
        return label.clone();
    }
    let kind = |value: &Value| value.get("kind").and_then(Value::as_str).map(str::to_owned);
    let text = match &axis.values[v] {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) if items.iter().all(|i| kind(i).is_some()) => {
            items.iter().filter_map(kind).collect::<Vec<_>>().join("+")
        }
        other => kind(other).unwrap_or_else(|| other.to_string()),
    };
    match text.char_indices().nth(MAX_LABEL_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Reads an axis path: keys of letters, digits and `_` joined by `.`, each followed by
/// any number of `[index]`.
fn parse_path(path: &str) -> Result<Vec<Part>, String> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(format!("must be 1 to {MAX_PATH_LEN} bytes"));
    }
    let bad = || format!("{path:?} is not a path like task.seq_len or policy.grad[0].max_norm");
    let mut parts = Vec::new();
    for piece in path.split('.') {
        let (key, mut rest) = piece.split_at(piece.find('[').unwrap_or(piece.len()));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad());
        }
        parts.push(Part::Key(key.to_owned()));
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            let digits = rest.get(1..close).filter(|_| rest.starts_with('[')).ok_or_else(bad)?;
            // One spelling per index (no leading zeros), so that two axes naming the same
            // field are found by comparing their paths.
            let padded = digits.len() > 1 && digits.starts_with('0');
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6 || padded {
                return Err(bad());
            }
            let index: usize = digits.parse().map_err(|_| bad())?;
            if index > MAX_PATH_INDEX {
                return Err(format!("list indexes go up to {MAX_PATH_INDEX}"));
            }
            parts.push(Part::Index(index));
            rest = &rest[close + 1..];
        }
    }
    if parts.len() > MAX_PATH_PARTS {
        return Err(format!("at most {MAX_PATH_PARTS} parts"));
    }
    if let Some(Part::Key(first)) = parts.first()
        && parts.len() == 1
        && (first == "seed" || first == "name")
    {
        return Err(format!("{first} is set for each job by the experiment (use seeds for more seeds)"));
    }
    Ok(parts)
}

/// Sets the field at `parts` of `root` to `value`. Missing objects on the way are
/// created; a list entry must exist.
fn set(root: &mut Value, parts: &[Part], value: Value) -> Result<(), String> {
    let mut here = root;
    let mut walked = String::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match part {
            Part::Key(key) => {
                if here.is_null() {
                    *here = Value::Object(serde_json::Map::new());
                }
                let Value::Object(object) = here else {
                    return Err(format!("the base spec's {walked} is not an object"));
                };
                if !walked.is_empty() {
                    walked.push('.');
                }
                walked.push_str(key);
                if last {
                    object.insert(key.clone(), value);
                    return Ok(());
                }
                here = object.entry(key.clone()).or_insert(Value::Null);
            }
            Part::Index(index) => {
                walked.push_str(&format!("[{index}]"));
                let Value::Array(items) = here else {
                    return Err(format!(
                        "the base spec has no list at {}",
                        walked.trim_end_matches(&format!("[{index}]"))
                    ));
                };
                let Some(item) = items.get_mut(*index) else {
                    return Err(format!("the base spec has no {walked}"));
                };
                if last {
                    *item = value;
                    return Ok(());
                }
                here = item;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: &Value, max_jobs: u64) -> Result<ValidExperiment, SpecError> {
        ExperimentSpec::parse(&serde_json::to_vec(value).expect("json"), max_jobs)
    }

    fn base() -> Value {
        json!({
            "seed": 10, "steps": 5,
            "task": {"kind": "adding", "seq_len": 20},
            "model": {"kind": "rnn", "layers": 1, "hidden": 8},
            "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
        })
    }

    #[test]
    fn the_grid_is_every_combination_times_the_seeds() {
        let exp = parse(
            &json!({
                "name": "sweep", "base": base(), "seeds": 2,
                "axes": [
                    {"path": "policy.grad[0].max_norm", "values": [0.5, 5]},
                    {"path": "task.seq_len", "values": [20, 50, 100]},
                ],
            }),
            100,
        )
        .expect("valid");
        assert_eq!(exp.cells.len(), 6);
        assert_eq!(exp.jobs.len(), 12);
        // The first axis changes slowest.
        assert_eq!(exp.cells[4].values, vec![json!(5), json!(50)]);
        let (cell, k, spec) = &exp.jobs[9];
        assert_eq!((*cell, *k), (4, 1));
        assert_eq!(spec.seed, 11);
        match &spec.task {
            crate::spec::TaskSpec::Adding(task) => assert_eq!(task.seq_len, 50),
            other => panic!("expected the adding task, got {other:?}"),
        }
        match &spec.policy.grad[0] {
            crate::spec::GradPolicy::ClipNorm { max_norm, .. } => assert_eq!(*max_norm, 5.0),
            other => panic!("expected clip_norm, got {other:?}"),
        }
        assert_eq!(spec.name.as_deref(), Some("sweep [5, 50] seed 11"));
    }

    #[test]
    fn whole_policy_lists_are_values_and_label_themselves() {
        let exp = parse(
            &json!({
                "name": "clip", "base": base(), "seeds": 1,
                "axes": [{"path": "policy.grad", "values": [[], [{"kind": "clip_norm", "max_norm": 1}]]}],
            }),
            10,
        )
        .expect("valid");
        assert_eq!(exp.cells[0].labels, vec!["none"]);
        assert_eq!(exp.cells[1].labels, vec!["clip_norm"]);
        assert!(exp.jobs[0].2.policy.grad.is_empty());
        assert_eq!(exp.jobs[1].2.policy.grad.len(), 1);
    }

    #[test]
    fn a_bad_cell_is_named_by_its_axis_value() {
        let err = parse(
            &json!({
                "name": "x", "base": base(),
                "axes": [{"path": "task.seq_len", "values": [20, 0]}, {"path": "model.hidden", "values": [8, 16]}],
            }),
            100,
        )
        .expect_err("seq_len 0 is refused");
        let SpecError::Field { field, message } = err else { panic!("a field error") };
        assert_eq!(field, "axes[0].values[1]");
        assert!(message.starts_with("cell 2 (0, 8): task.seq_len:"), "{message}");
        // A base field that no axis sets is named in the base.
        let mut bad = base();
        bad["model"]["hidden"] = json!(0);
        let err = parse(&json!({"name": "x", "base": bad, "axes": [{"path": "task.seq_len", "values": [20]}]}), 100)
            .expect_err("hidden 0");
        assert!(matches!(err, SpecError::Field { ref field, .. } if field == "base.model.hidden"), "{err:?}");
    }

    #[test]
    fn paths_and_sizes_are_bounded() {
        let field = |v: Value, max: u64| match parse(&v, max) {
            Err(SpecError::Field { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let axis = |path: &str| json!({"name": "x", "base": base(), "axes": [{"path": path, "values": [1]}]});
        assert_eq!(field(axis("task..seq_len"), 10), "axes[0].path");
        assert_eq!(field(axis("seed"), 10), "axes[0].path");
        assert_eq!(field(axis("policy.grad[3].max_norm"), 10), "axes[0].path");
        assert_eq!(field(axis("policy.grad[x]"), 10), "axes[0].path");
        // `[00]` would be `[0]` under another spelling, hiding that two axes set one field.
        assert_eq!(field(axis("policy.grad[00].max_norm"), 10), "axes[0].path");
        assert_eq!(field(axis(&"a.".repeat(120)), 10), "axes[0].path");
        let overlap = json!({"name": "x", "base": base(), "axes": [
            {"path": "policy.grad", "values": [[]]}, {"path": "policy.grad[0].max_norm", "values": [1]}]});
        assert_eq!(field(overlap, 10), "axes[1].path");
        let big = json!({"name": "x", "base": base(), "seeds": 5,
            "axes": [{"path": "task.seq_len", "values": [10, 20, 30]}]});
        assert_eq!(field(big.clone(), 14), "axes");
        assert!(parse(&big, 15).is_ok());
        assert_eq!(field(json!({"name": "x", "base": base(), "seeds": 0}), 10), "seeds");
        assert_eq!(field(json!({"name": "x", "base": base(), "seeds": 20}), 10), "seeds");
        assert_eq!(field(json!({"name": "x", "base": base(), "threshold": {"metric": "loss"}}), 10), "threshold");
        assert_eq!(field(json!({"name": "x", "base": base(), "bogus": 1}), 10), "bogus");
        let labels =
            json!({"name": "x", "base": base(), "axes": [{"path": "task.seq_len", "values": [1, 2], "labels": ["a"]}]});
        assert_eq!(field(labels, 10), "axes[0].labels");
        // A grid whose size overflows is refused, not wrapped.
        let values: Vec<u64> = (0..1000).collect();
        let axes: Vec<Value> = (0..8).map(|i| json!({"path": format!("x{i}"), "values": values.clone()})).collect();
        assert_eq!(field(json!({"name": "x", "base": base(), "axes": axes}), 100), "axes");
    }

    #[test]
    fn job_names_stay_within_the_bound() {
        let name = job_name(&"é".repeat(150), &["a".repeat(64)], u64::MAX);
        assert!(name.len() <= MAX_NAME_LEN, "{}", name.len());
        assert!(name.ends_with(&format!(" seed {}", u64::MAX)));
    }
}
