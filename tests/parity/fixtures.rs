//! The files of the TorchScript tests, shared by the parity and the API tests.

use std::path::PathBuf;
use std::process::Command;

/// Runs `user_models.py` into a fresh folder: the scripted models, their data sets (good
/// and bad) and the PyTorch reference runs of `steps` steps with `clip_grad_norm_(max_norm)`
/// and AdamW at `lr`.
pub fn user_models(steps: u64, max_norm: f64, lr: f64) -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/parity/user_models.py");
    let python = std::env::var("GRADSCOPE_PYTHON").unwrap_or_else(|_| "python".to_owned());
    let output = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .args([steps.to_string(), max_norm.to_string(), lr.to_string()])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python} (run the tests through scripts/with-torch): {err}"));
    assert!(output.status.success(), "user_models.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    dir
}
