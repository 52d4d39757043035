//! Trains the presets (all, or those named on the command line; or a spec from a JSON
//! file given as `--spec FILE`) here on the CPU and prints the figures a comparison is
//! read by. `cargo run --release --example presets -- exploding-rnn exploding-rnn-clipped`.

use std::time::Instant;

use gradscope::spec::{JobSpec, ValidSpec};
use gradscope::train::presets::{self, Preset};

fn main() -> anyhow::Result<()> {
    tch::set_num_threads(std::env::var("TORCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let on_cpu = |spec: ValidSpec| {
        let mut spec = spec.into_inner();
        spec.device = "cpu".to_owned();
        ValidSpec::try_from(spec)
    };
    let mut runs: Vec<(String, ValidSpec)> = Vec::new();
    if let Some(i) = args.iter().position(|a| a == "--spec") {
        let bytes = std::fs::read(&args[i + 1])?;
        let spec = on_cpu(JobSpec::parse(&bytes)?)?;
        runs.push((spec.display_name(), spec));
    } else {
        for Preset { name, spec, .. } in presets::all() {
            if args.is_empty() || args.contains(&name) {
                runs.push((name, on_cpu(spec)?));
            }
        }
    }
    println!(
        "| preset | steps | first loss | final loss | valid loss | metric | diverged | max grad norm | max clipped | skipped | first/last | weight norm | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, spec) in runs {
        let start = Instant::now();
        let s = presets::run(&spec)?;
        let opt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"));
        println!(
            "| {name} | {} | {:.3} | {:.3} | {} | {} | {} | {:.3e} | {:.3e} | {} | {:.2e} | {:.1} | {:.1} |",
            s.steps,
            s.first_loss,
            s.final_loss,
            opt(s.valid_loss),
            opt(s.valid_metric),
            if s.diverged { "yes" } else { "no" },
            s.max_grad_norm,
            s.max_grad_norm_clipped,
            s.skipped_steps,
            s.first_last_ratio,
            s.final_weight_norm,
            start.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}
