//! Parity of uploaded TorchScript models: `user_models.py` scripts a 2-block GPT-style
//! transformer and a BatchNorm MLP, writes their data sets, and trains each in PyTorch
//! (`torch.optim.AdamW`, `clip_grad_norm_`) for 50 steps. Here the same files go through
//! the real API into a running service, which trains them with the same optimizer and
//! policy; losses and every layer's gradient norm must agree within 1e-4 (relative, as a
//! norm of the difference over the run).
//!
//! The batches are the same because each data set has exactly `batch_size` samples: a
//! gradscope batch is then one whole shuffled epoch, every sample once, and the loss (a
//! mean), batch norm's statistics and every gradient are sums over the batch, which a
//! permutation changes only by float rounding.

use std::path::Path;
use std::time::{Duration, Instant};

use gradscope::Application;
use gradscope::config::ServeConfig;
use serde_json::{Value, json};

const STEPS: u64 = 50;
const MAX_NORM: f64 = 0.5;
const LR: f64 = 1e-2;
const TOL: f64 = 1e-4;
/// Gradient norms below this are float rounding of a gradient that is zero in exact
/// arithmetic.
const NOISE: f64 = 1e-6;

/// Runs `user_models.py` into a fresh folder.
pub fn fixtures() -> tempfile::TempDir {
    crate::fixtures::user_models(STEPS, MAX_NORM, LR)
}

struct Service {
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start() -> Self {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("gradscope.db").display());
        let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("address"), &url, dir.path().join("data"));
        config.torch_threads = Some(1);
        config.worker_binary = Some(env!("CARGO_BIN_EXE_gradscope").into());
        let app = Application::build(config).await.expect("application builds");
        let base = format!("http://127.0.0.1:{}/api/v1", app.port());
        tokio::spawn(app.run_until(std::future::pending::<()>()));
        Self { base, client: reqwest::Client::new(), _dir: dir }
    }

    async fn upload(&self, what: &str, file: &Path) -> String {
        let bytes = std::fs::read(file).expect("read fixture");
        let response = self
            .client
            .post(format!("{}/{what}", self.base))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("upload");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "{what}: {body}");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.expect("get");
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("json")
    }

    /// Trains `name`'s module on its data set to the end and returns the job.
    async fn train(&self, dir: &Path, name: &str, samples: i64) -> Value {
        let model = self.upload("models", &dir.join(format!("{name}.pt"))).await;
        let dataset = self.upload("datasets", &dir.join(format!("{name}.safetensors"))).await;
        let spec = json!({
            "seed": 3,
            "steps": STEPS,
            "batch_size": samples,
            "device": "cpu",
            "model": {"kind": "torchscript", "id": model},
            "task": {"kind": "dataset", "id": dataset, "loss": "cross_entropy", "eval_every": 0},
            "optimizer": {"kind": "adamw", "lr": LR, "weight_decay": 0.01},
            "policy": {"grad": [{"kind": "clip_norm", "max_norm": MAX_NORM}]},
            "monitor": {"every": 1},
            "checkpoint_every": 0,
        });
        let response = self.client.post(format!("{}/jobs", self.base)).json(&spec).send().await.expect("submit");
        let status = response.status();
        let job: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "{name}: {job}");
        let id = job["id"].as_str().expect("id").to_owned();
        let start = Instant::now();
        loop {
            let job = self.get(&format!("/jobs/{id}")).await;
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                assert_eq!(job["status"], "succeeded", "{name}: {job}");
                return job;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "{name} never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn floats(values: &Value) -> Vec<f64> {
    values.as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect()
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(f64::MIN_POSITIVE)
}

async fn compare(service: &Service, dir: &Path, name: &str, samples: i64) {
    let job = service.train(dir, name, samples).await;
    let id = job["id"].as_str().expect("id");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("reference"))
            .expect("json");

    let steps = service.get(&format!("/jobs/{id}/steps")).await;
    let losses = floats(&steps["loss"]);
    let ref_losses = floats(&reference["losses"]);
    let err = relative(&losses, &ref_losses);
    assert!(err <= TOL, "{name}: losses differ by {err:e}\n{losses:?}\n{ref_losses:?}");
    assert!(ref_losses[STEPS as usize - 1] < ref_losses[0], "{name}: the reference run learns");
    let clipped = floats(&steps["clip_coef"]).iter().filter(|&&c| c < 1.0).count();
    assert!(clipped > 0, "{name}: clip_norm {MAX_NORM} clips some steps");

    let names: Vec<String> =
        reference["names"].as_array().expect("names").iter().map(|n| n.as_str().expect("name").to_owned()).collect();
    let layers = service.get(&format!("/jobs/{id}/layers")).await;
    let layer_names: Vec<&str> =
        layers["layers"].as_array().expect("layers").iter().map(|l| l["name"].as_str().expect("name")).collect();
    assert_eq!(layer_names, names, "{name}: layers are the module's parameters, by its names, in its order");

    let stats = service.get(&format!("/jobs/{id}/layer-stats?stat=grad_norm")).await;
    let ref_norms = reference["grad_norms"].as_array().expect("norms");
    for (i, layer) in stats["layers"].as_array().expect("layers").iter().enumerate() {
        assert_eq!(floats(&layer["step"]).len(), STEPS as usize, "{name}: every step recorded");
        let ours = floats(&layer["grad_norm"]);
        let theirs: Vec<f64> = ref_norms.iter().map(|step| step[i].as_f64().expect("norm")).collect();
        if theirs.iter().all(|&n| n < NOISE) {
            // A bias right before batch norm: its gradient is zero by construction, and
            // both runs see only float rounding.
            assert!(ours.iter().all(|&n| n < NOISE), "{name}: {} has a gradient: {ours:?}", names[i]);
            continue;
        }
        let err = relative(&ours, &theirs);
        assert!(err <= TOL, "{name}: {} gradient norms differ by {err:e}\n{ours:?}\n{theirs:?}", names[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_models_train_as_in_pytorch() {
    let dir = fixtures();
    let service = Service::start().await;
    compare(&service, dir.path(), "gpt", 8).await;
    compare(&service, dir.path(), "mlp", 16).await;
}
