use super::*;

fn parse(json: &str) -> Result<ValidSpec, SpecError> {
    JobSpec::parse(json.as_bytes())
}

fn field(json: &str) -> Option<String> {
    match parse(json) {
        Err(err) => err.fields().into_iter().next().map(|f| f.field),
        Ok(_) => None,
    }
}

#[test]
fn defaults_fill_everything_but_the_model_kind() {
    let spec = parse(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"}}"#).expect("valid");
    assert_eq!(spec.steps, DEFAULT_STEPS);
    assert_eq!(spec.model.hidden, model::DEFAULT_HIDDEN);
    assert_eq!(spec.optimizer.weight_decay(), optimizer::DEFAULT_ADAMW_WEIGHT_DECAY);
    assert_eq!(spec.display_name(), "lstm-char_lm");
    assert_eq!(field(r#"{"task":{"kind":"char_lm"}}"#).as_deref(), Some("model"));
    assert_eq!(field(r#"{"model":{"layers":3}}"#).as_deref(), Some("model.kind"));
}

#[test]
fn defaults_follow_the_model_kind() {
    let spec = parse(r#"{"model":{"kind":"transformer"}}"#).expect("a transformer alone is valid");
    assert_eq!(spec.model.norm, Norm::Layer);
    assert_eq!(spec.model.norm_position, NormPosition::Pre);
    assert_eq!(spec.model.activation, Some(Activation::Gelu));
    assert_eq!(spec.task.kind(), "char_lm");
    assert_eq!(spec.task.corpus(), Some(task::DEFAULT_CORPUS));
    let mlp = parse(r#"{"model":{"kind":"mlp"}}"#).expect("an mlp alone is valid");
    assert_eq!(mlp.task.kind(), "classification");
    assert_eq!((mlp.model.norm, mlp.model.activation), (Norm::None, Some(Activation::Relu)));
    // What a client writes wins; the resolved values are in the serialised spec.
    let rms = parse(r#"{"model":{"kind":"transformer","norm":"rms"}}"#).expect("valid");
    assert_eq!(rms.model.norm, Norm::Rms);
    let json = serde_json::to_value(&*spec).expect("serialise");
    assert_eq!((json["model"]["norm"].as_str(), json["model"]["activation"].as_str()), (Some("layer"), Some("gelu")));
    assert_eq!(field(r#"{"model":{"kind":"transformer","norm":"none"}}"#).as_deref(), Some("model.norm"));
}

#[test]
fn validation_names_nested_fields() {
    let json = r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},
        "policy":{"grad":[{"kind":"clip_norm","max_norm":1},{"kind":"clip_norm","max_norm":-1}]}}"#;
    assert_eq!(field(json).as_deref(), Some("policy.grad[1].max_norm"));
}

#[test]
fn errors_name_the_field() {
    assert_eq!(field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"bogus":1}"#).as_deref(), Some("bogus"));
    assert_eq!(
        field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm","hidden":"wide"}}"#).as_deref(),
        Some("model.hidden")
    );
    assert_eq!(field(r#"{"task":{"kind":"char_lm","oops":1},"model":{"kind":"lstm"}}"#).as_deref(), Some("task.oops"));
    assert_eq!(field(r#"{"task":{"kind":"poetry"},"model":{"kind":"lstm"}}"#).as_deref(), Some("task.kind"));
    assert_eq!(field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"cnn"}}"#).as_deref(), Some("model.kind"));
    assert_eq!(
        field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"optimizer":{"schedule":"step"}}"#).as_deref(),
        Some("optimizer.schedule")
    );
    assert_eq!(
        field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"policy":{"grad":[{"kind":"nope"}]}}"#).as_deref(),
        Some("policy.grad[0].kind")
    );
    assert_eq!(
        field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"policy":{"grad":[{"kind":"clip_norm"}]}}"#)
            .as_deref(),
        Some("policy.grad[0].max_norm")
    );
    assert_eq!(
        field(r#"{"model":{"kind":"lstm"},"policy":{"grad":[{"kind":"agc","lamda":1}]}}"#).as_deref(),
        Some("policy.grad[0].lamda")
    );
    assert!(matches!(parse(r#"{"model": "#), Err(SpecError::Syntax(_))));
    assert!(matches!(parse(r#"{"model":{"kind":"lstm"}} {}"#), Err(SpecError::Syntax(_))));
}

#[test]
fn models_must_fit_their_task() {
    assert_eq!(field(r#"{"task":{"kind":"adding"},"model":{"kind":"mlp"}}"#).as_deref(), Some("model.kind"));
    assert_eq!(field(r#"{"task":{"kind":"classification"},"model":{"kind":"gru"}}"#).as_deref(), Some("model.kind"));
    assert_eq!(
        field(r#"{"task":{"kind":"copy"},"model":{"kind":"transformer","norm":"layer","hidden":30,"heads":4}}"#)
            .as_deref(),
        Some("model.heads")
    );
    assert_eq!(
        field(r#"{"task":{"kind":"adding"},"model":{"kind":"lstm","activation":"relu"}}"#).as_deref(),
        Some("model.activation")
    );
    assert_eq!(
        field(r#"{"task":{"kind":"copy","seq_len":20,"length":10},"model":{"kind":"gru"}}"#).as_deref(),
        Some("task.seq_len")
    );
    let mlp =
        parse(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp","norm":"batch","activation":"sigmoid"}}"#)
            .expect("valid");
    assert_eq!(mlp.model.activation(), Activation::Sigmoid);
    assert!(mlp.task.corpus().is_none());
}

#[test]
fn grad_policies_parse_with_their_defaults() {
    let spec = parse(
        r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"policy":{"grad":[
            {"kind":"clip_norm","max_norm":1,"norm_type":"inf"},{"kind":"agc"},{"kind":"autoclip"},
            {"kind":"zclip"},{"kind":"skip_spike","z_threshold":4}],
            "weight":[{"kind":"max_norm","max":2}]}}"#,
    )
    .expect("valid");
    let grad = &spec.policy.grad;
    assert!(matches!(grad[0], GradPolicy::ClipNorm { norm_type: NormType::Inf, .. }));
    assert!(matches!(&grad[1], GradPolicy::Agc(p) if *p == AgcPolicy::default() && p.exclude_head));
    assert!(matches!(&grad[2], GradPolicy::Autoclip(p) if *p == AutoclipPolicy::default()));
    assert!(matches!(&grad[3], GradPolicy::Zclip(p) if *p == ZclipPolicy::default() && p.max_grad_norm == Some(1.0)));
    assert!(matches!(
        &grad[4],
        GradPolicy::SkipSpike(p) if p.z_threshold == 4.0 && p.max_consecutive == policy::DEFAULT_SPIKE_MAX_CONSECUTIVE
    ));
    assert_eq!(spec.optimizer.no_decay, NoDecay::None);
    // An explicit `null` cap survives a round trip (a stored spec is parsed again on resume).
    let uncapped: GradPolicy = serde_json::from_str(r#"{"kind":"zclip","max_grad_norm":null}"#).expect("parses");
    let again: GradPolicy =
        serde_json::from_value(serde_json::to_value(&uncapped).expect("serialise")).expect("parses");
    assert!(matches!(again, GradPolicy::Zclip(ZclipPolicy { max_grad_norm: None, .. })));
    // Norm types round-trip as clients write them.
    let json = serde_json::to_value(&grad[0]).expect("serialise");
    assert_eq!(json["norm_type"], "inf");
    assert_eq!(
        field(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"policy":{"grad":[{"kind":"zclip","warmup":1}]}}"#)
            .as_deref(),
        Some("policy.grad[0].warmup")
    );
}

#[test]
fn a_stored_spec_reads_back_the_same() {
    let spec = parse(r#"{"model":{"kind":"gru"},"policy":{"grad":[{"kind":"skip_spike"}]}}"#).expect("valid");
    let stored = serde_json::to_vec(&spec).expect("serialise");
    let again = JobSpec::parse(&stored).expect("reads back");
    assert_eq!(serde_json::to_value(&again).expect("json"), serde_json::to_value(&spec).expect("json"));
}

#[test]
fn code_built_specs_are_checked_as_written() {
    let mut spec = parse(r#"{"model":{"kind":"transformer"}}"#).expect("valid").into_inner();
    spec.model.norm = Norm::None;
    assert_eq!(
        ValidSpec::try_from(spec).map_err(|e| e.to_string()).err().as_deref(),
        Some("model.norm: transformer: layer or rms")
    );
}

#[test]
fn a_torchscript_model_trains_on_a_dataset_task_named_by_ids() {
    let spec = parse(r#"{"model":{"kind":"torchscript","id":"m"},"task":{"kind":"dataset","id":"d"}}"#).expect("valid");
    assert_eq!((spec.model.id.as_deref(), spec.task.dataset()), (Some("m"), Some("d")));
    let TaskSpec::Dataset(task) = &spec.task else { panic!("a dataset task") };
    assert_eq!((task.loss, task.eval_every), (Loss::CrossEntropy, task::DEFAULT_EVAL_EVERY));
    assert_eq!(spec.model.activation, None, "nothing built-in is filled in for a module");
    // Stored specs name the id right after the kind: the text deletion checks look for.
    let json = serde_json::to_string(&*spec).expect("serialise");
    assert!(json.contains(r#""model":{"kind":"torchscript","id":"m""#), "{json}");
    assert!(json.contains(r#""task":{"kind":"dataset","id":"d""#), "{json}");

    assert_eq!(field(r#"{"model":{"kind":"torchscript","id":"m"}}"#).as_deref(), Some("task"));
    assert_eq!(
        field(r#"{"model":{"kind":"torchscript"},"task":{"kind":"dataset","id":"d"}}"#).as_deref(),
        Some("model.id")
    );
    assert_eq!(
        field(r#"{"model":{"kind":"torchscript","id":"m"},"task":{"kind":"adding"}}"#).as_deref(),
        Some("task.kind")
    );
    assert_eq!(field(r#"{"model":{"kind":"mlp"},"task":{"kind":"dataset","id":"d"}}"#).as_deref(), Some("task.kind"));
    assert_eq!(field(r#"{"model":{"kind":"lstm","id":"m"}}"#).as_deref(), Some("model.id"));
    assert_eq!(
        field(r#"{"model":{"kind":"torchscript","id":"m"},"task":{"kind":"dataset"}}"#).as_deref(),
        Some("task.id")
    );
    // Inside a tagged task the parser can name only the task, as for every task's fields.
    let unknown = field(r#"{"model":{"kind":"torchscript","id":"m"},"task":{"kind":"dataset","id":"d","loss":"l1"}}"#);
    assert!(unknown.is_some_and(|f| f.starts_with("task")));
}
