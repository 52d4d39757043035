//! The WebSocket protocol of `GET /api/v1/jobs/{id}/stream`, as types: every message the
//! server sends is a [`ServerMessage`], every message a client may send a
//! [`ClientMessage`], both tagged by `type`. Their JSON Schema, generated from these types,
//! is served at `GET /api/v1/stream-schema.json`.

use axum::Json;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{OpenApi, ToSchema};

use super::jobs::Layer;
use super::probes::{MatrixInfo, matrix_list};
use crate::store::{Job, JobStatus};
use crate::train::stats::{HIST_BINS, histogram_edges};
use crate::train::{Event, LayerStats, StepReport};
use crate::vocab::{EventKind, Statistic};

/// A message from the server. Numbers that are not finite (a NaN loss, a layer holding an
/// infinity) are `null`.
// Built, serialized and dropped at once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The first message: the job, its layers, and the names and bucket edges the step
    /// messages use.
    Hello {
        job: Job,
        /// The job's layers (one per named parameter tensor); empty until it has started.
        layers: Vec<Layer>,
        /// The per-layer statistics a step's `layers` holds, in order.
        statistics: Vec<Statistic>,
        /// The lower edge of each power-of-two histogram bucket, 2^-40 … 2^8. A `hist`
        /// entry holds `histogram_edges.length + 2` counts: exact zeros, then one bucket
        /// per edge (|g| from that edge to the next; the first also counts the smaller
        /// non-zero values, the last every larger finite one), then NaN/±Inf.
        histogram_edges: Vec<f64>,
        /// The matrices whose spectral radius a step message's `spectral` holds, in order.
        matrices: Vec<MatrixInfo>,
        /// The blocks whose output a recorded step's `signal` describes, in order.
        blocks: Vec<String>,
    },
    /// One recorded step (thinned by `every`).
    Step {
        step: u64,
        #[schema(value_type = Option<f64>, required = true)]
        loss: f64,
        /// Global L2 norm of the gradients before the grad policies.
        #[schema(value_type = Option<f64>, required = true)]
        grad_norm: f64,
        /// Global L2 norm after the grad policies.
        #[schema(value_type = Option<f64>, required = true)]
        grad_norm_clipped: f64,
        #[schema(value_type = Option<f64>, required = true)]
        clip_coef: f64,
        lr: f64,
        /// The update was dropped.
        skipped: bool,
        /// The loss scale the step ran at (fp16 with loss scaling; absent otherwise).
        #[serde(skip_serializing_if = "Option::is_none")]
        loss_scale: Option<f64>,
        /// fp16's loss-scaled gradients overflowed: the update was skipped and the scale
        /// backed off.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        overflow: bool,
        /// When the server published the step, in seconds since the Unix epoch.
        time: f64,
        /// The layer indices the `layers` arrays follow, when a subset was asked for.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Vec<usize>>)]
        indices: Option<&'a [usize]>,
        /// Per-layer statistics, on the steps the job records them.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(schema_with = step_layers_schema)]
        layers: Option<StepLayers<'a>>,
        /// On the steps `monitor.spectral_every` measures: each matrix's largest singular
        /// value, in the order of `hello.matrices`; null where not finite.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Vec<Option<f64>>>)]
        spectral: Option<&'a [f64]>,
        /// On the steps `monitor.time_every` profiles: ‖∂L/∂x_t‖ for each input position t,
        /// averaged over the batch; null where not finite.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Vec<Option<f64>>>)]
        time_profile: Option<&'a [f64]>,
        /// On recorded steps: each block's output mean and root mean square, in the order of
        /// `hello.blocks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<SignalStats<'a>>,
    },
    /// A diagnosis, a policy summary or action, or a validation result.
    Event {
        step: u64,
        kind: EventKind,
        #[schema(required = true)]
        layer: Option<usize>,
        #[schema(required = true)]
        value: Option<f64>,
        #[schema(value_type = String)]
        message: &'a str,
    },
    /// The job ended; the last message before the socket closes.
    Status {
        status: JobStatus,
        /// Why it failed or diverged.
        #[schema(value_type = Option<String>, required = true)]
        error: Option<&'a str>,
    },
    /// The client fell behind: this many messages were skipped, and the feed goes on
    /// from the newest.
    Lagged { missed: u64 },
    /// A client message the server could not read.
    Error { message: String },
}

impl<'a> ServerMessage<'a> {
    /// The `hello` for `job` with `layers`.
    pub fn hello(job: Job, layers: Vec<Layer>) -> Self {
        let infos: Vec<crate::train::LayerInfo> = layers
            .iter()
            .map(|l| crate::train::LayerInfo {
                index: l.index,
                name: l.name.clone(),
                shape: l.shape.clone(),
                numel: l.numel,
            })
            .collect();
        let blocks = crate::train::model::block_names(&job.spec.model);
        Self::Hello {
            job,
            blocks,
            layers,
            statistics: Statistic::ALL.to_vec(),
            histogram_edges: histogram_edges(),
            matrices: matrix_list(&infos),
        }
    }

    /// A step, with every layer or only those of `subset`.
    pub fn step(report: &'a StepReport, time: f64, subset: Option<&'a [usize]>) -> Self {
        Self::Step {
            step: report.step,
            loss: report.loss,
            grad_norm: report.grad_norm,
            grad_norm_clipped: report.grad_norm_clipped,
            clip_coef: report.clip_coef,
            lr: report.lr,
            skipped: report.skipped,
            loss_scale: report.loss_scale,
            overflow: report.overflow,
            time,
            indices: subset,
            layers: report.layers.as_ref().map(|stats| StepLayers { stats, subset }),
            spectral: report.probes.spectral.as_deref(),
            time_profile: report.probes.time.as_deref(),
            signal: report.probes.signal.as_deref().map(|values| {
                let (mean, rms) = values.split_at(values.len() / 2);
                SignalStats { mean, rms }
            }),
        }
    }

    pub fn event(event: &'a Event) -> Self {
        Self::Event {
            step: event.step,
            kind: event.kind,
            layer: event.layer,
            value: event.value,
            message: &event.message,
        }
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        // Plain data and string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A recorded step's forward signal: per block, its output's mean and root mean square.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignalStats<'a> {
    #[schema(value_type = Vec<Option<f64>>)]
    pub mean: &'a [f64],
    #[schema(value_type = Vec<Option<f64>>)]
    pub rms: &'a [f64],
}

/// A message from a client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Changes what the client receives from now on; an absent field keeps its value.
    Subscribe {
        /// Send every N-th step (0 counts as 1).
        every: Option<u64>,
        /// The layer indices whose statistics to send (repeats count once).
        layers: Option<Vec<usize>>,
    },
}

/// A step's per-layer statistics: one array per statistic, by layer (or by position in
/// `indices`), and `hist` when the job records histograms.
#[derive(Debug)]
pub struct StepLayers<'a> {
    stats: &'a LayerStats,
    subset: Option<&'a [usize]>,
}

impl Serialize for StepLayers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for &stat in Statistic::ALL {
            let values = self.stats.get(stat);
            match self.subset {
                None => map.serialize_entry(stat.as_str(), &Compact(values.iter().copied().map(Some)))?,
                Some(ids) => {
                    // An index past the last layer gets null.
                    map.serialize_entry(stat.as_str(), &Compact(ids.iter().map(|&i| values.get(i).copied())))?;
                }
            }
        }
        if let Some(hist) = &self.stats.hist {
            let per_layer: Vec<&[u64]> = hist.chunks(HIST_BINS).collect();
            match self.subset {
                None => map.serialize_entry("hist", &per_layer)?,
                Some(ids) => {
                    let chosen: Vec<&[u64]> = ids.iter().filter_map(|&i| per_layer.get(i).copied()).collect();
                    map.serialize_entry("hist", &chosen)?;
                }
            }
        }
        map.end()
    }
}

/// The per-layer statistics at the precision they are measured in: float32 sums and
/// norms, so a value is written in the shortest form that reads back to its nearest
/// float32 (about 8 digits instead of float64's 17; most of a step message is these
/// numbers, and every byte of it goes to every subscriber). A value beyond float32's range
/// or below its normal numbers keeps its float64 form; a missing or non-finite one is null.
struct Compact<I>(I);

impl<I: Iterator<Item = Option<f64>> + Clone> Serialize for Compact<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone().map(|value| match value {
            Some(v) if v == 0.0 || (f64::from(f32::MIN_POSITIVE)..=f64::from(f32::MAX)).contains(&v.abs()) => {
                Number::F32(v as f32)
            }
            Some(v) if v.is_finite() => Number::F64(v),
            _ => Number::Null,
        }))
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Number {
    F32(f32),
    F64(f64),
    Null,
}

/// The schema of [`StepLayers`], from the statistics' names.
fn step_layers_schema() -> Schema {
    let column = || {
        ArrayBuilder::new().items(ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::Number, Type::Null])))
    };
    let mut object = ObjectBuilder::new().description(Some(
        "One array per statistic (see `hello.statistics`), one entry per layer, or per index of \
         `indices`; null where a value does not exist. Values are written to the float32 precision \
         they are measured in (the shortest text that reads back to the same float32)",
    ));
    for stat in Statistic::ALL {
        object = object.property(stat.as_str(), column()).required(stat.as_str());
    }
    let counts = ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
        .min_items(Some(HIST_BINS))
        .max_items(Some(HIST_BINS));
    let hist = ArrayBuilder::new().items(counts).description(Some(
        "Per layer, the exact counts of |g| per histogram bucket (see `hello.histogram_edges`); present \
         when the job records histograms",
    ));
    object.property("hist", hist).into()
}

/// The messages, for their schemas (and every schema they use).
#[derive(OpenApi)]
#[openapi(components(schemas(ServerMessage<'static>, ClientMessage)))]
struct Messages;

/// The JSON Schema document of the stream's messages.
#[derive(Serialize)]
pub struct StreamSchema {
    #[serde(rename = "$schema")]
    dialect: &'static str,
    title: &'static str,
    description: &'static str,
    /// The root validates a server message.
    #[serde(rename = "$ref")]
    root: String,
    /// Every schema, where the `$ref`s (OpenAPI-style) point.
    components: utoipa::openapi::Components,
}

impl StreamSchema {
    pub fn new() -> Self {
        Self {
            dialect: "https://json-schema.org/draft/2020-12/schema",
            title: "gradscope stream messages",
            description: "The JSON text frames of GET /api/v1/jobs/{id}/stream. The document validates a \
                message from the server (ServerMessage); #/components/schemas/ClientMessage is what a \
                client may send. Both are tagged by `type`.",
            root: reference::<ServerMessage<'_>>(),
            components: messages().components.unwrap_or_default(),
        }
    }
}

impl Default for StreamSchema {
    fn default() -> Self {
        Self::new()
    }
}

/// The messages' schemas with the spec's parts written as in the OpenAPI document (the
/// job a `hello` carries holds its spec), so both documents describe a spec alike.
fn messages() -> utoipa::openapi::OpenApi {
    let mut doc = Messages::openapi();
    crate::spec::schema::publish_ranges(&mut doc);
    doc
}

fn reference<T: ToSchema>() -> String {
    format!("#/components/schemas/{}", T::name())
}

/// JSON Schema of the stream's messages.
#[utoipa::path(get, operation_id = "stream_schema", path = "/api/v1/stream-schema.json", tag = "jobs",
    responses((status = 200, description = "A JSON Schema (2020-12) document of the WebSocket stream's messages", content_type = "application/json")))]
pub async fn document() -> Json<StreamSchema> {
    Json(StreamSchema::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_has_every_message_and_the_vocabulary() {
        let doc = serde_json::to_value(StreamSchema::new()).expect("json");
        let schemas = &doc["components"]["schemas"];
        let variants = schemas["ServerMessage"]["oneOf"].as_array().expect("one of");
        let mut types: Vec<&str> =
            variants.iter().map(|v| v["properties"]["type"]["enum"][0].as_str().expect("a type tag")).collect();
        types.sort_unstable();
        assert_eq!(types, ["error", "event", "hello", "lagged", "status", "step"]);
        let names: Vec<&str> =
            schemas["Statistic"]["enum"].as_array().expect("enum").iter().filter_map(|v| v.as_str()).collect();
        let wire: Vec<&str> = Statistic::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, wire, "the schema lists the wire names");
        assert!(schemas["Job"].is_object(), "the schemas the messages use come along");
        assert!(schemas["ClientMessage"].is_object());
    }

    #[test]
    fn a_subset_picks_layers_and_nulls_what_is_missing() {
        let stats = LayerStats {
            grad_norm: vec![1.0, f64::NAN, 3.0],
            hist: Some((0..3 * HIST_BINS as u64).collect()),
            ..LayerStats::default()
        };
        let all = serde_json::to_value(StepLayers { stats: &stats, subset: None }).expect("json");
        assert_eq!(all["grad_norm"], serde_json::json!([1.0, null, 3.0]));
        assert_eq!(all["hist"].as_array().map(Vec::len), Some(3));
        let some = serde_json::to_value(StepLayers { stats: &stats, subset: Some(&[2, 7]) }).expect("json");
        assert_eq!(some["grad_norm"], serde_json::json!([3.0, null]));
        assert_eq!(some["hist"][0][0], 2 * HIST_BINS as u64);
        assert_eq!(some["hist"].as_array().map(Vec::len), Some(1), "histograms of existing layers only");
    }

    #[test]
    fn statistics_are_written_to_float32_precision() {
        let stats = LayerStats {
            grad_norm: vec![1.0 / 3.0, 0.1, f64::INFINITY, 1e-40, -7.0],
            grad_max: vec![f64::from(f32::MAX), 1e300, f64::NAN, 0.0, 123_456_789.123],
            ..LayerStats::default()
        };
        let text = serde_json::to_string(&StepLayers { stats: &stats, subset: None }).expect("json");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parse");
        let written = |stat: &str| -> Vec<String> {
            value[stat].as_array().expect(stat).iter().map(ToString::to_string).collect()
        };
        // The shortest text that reads back to the nearest float32.
        assert_eq!(written("grad_norm"), ["0.33333334", "0.1", "null", "1e-40", "-7.0"]);
        assert_eq!(written("grad_max")[2..], ["null", "0.0", "123456790.0"]);
        assert_eq!(written("grad_max")[0].parse::<f32>().ok(), Some(f32::MAX));
        // Past float32's range, or below its normal numbers: the float64 form.
        assert_eq!(value["grad_max"][1].as_f64(), Some(1e300));
        assert_eq!(value["grad_norm"][3].as_f64(), Some(1e-40));
    }
}
