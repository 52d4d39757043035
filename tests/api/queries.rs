//! Strict query strings: on every route that reads one, a parameter the route does not
//! take is a 400 in the contract's shape naming it (a client paging with `offset` would
//! otherwise loop on the first page), however many there are; the documented parameters
//! still work.

use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{TestApp, spawn_app, tiny_lstm_spec};

/// GETs `path` and checks it is refused for naming `field`, which the message names too.
async fn refused(app: &TestApp, path: &str, field: &str) -> String {
    let response = app.get(path).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 400, "{path}: {body}");
    assert_eq!(body["error"]["code"], "invalid_query", "{path}: {body}");
    assert_eq!(body["error"]["field"], field, "{path}: {body}");
    let message = body["error"]["message"].as_str().expect("message").to_owned();
    assert!(message.contains(&format!("`{field}`")), "{path}: {message}");
    message
}

/// GETs `path` and returns its 200 answer.
async fn answer(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_by_name_on_every_route() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(app.submit(&tiny_lstm_spec(20, 0.25)).await["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        app.wait_finished(id).await;
    }
    let id = &ids[0];

    // Listing: `page` is not a parameter; `limit` still cuts the list.
    assert_eq!(answer(&app, "/api/v1/jobs?limit=1").await["jobs"].as_array().expect("jobs").len(), 1);
    let message = refused(&app, "/api/v1/jobs?limit=1&page=1", "page").await;
    assert_eq!(
        message,
        "unknown query parameter `page`: this route takes `status`, `limit`, `offset`, `name`, `model`, `task`, `sort`, `order`"
    );
    refused(&app, "/api/v1/jobs?status=succeeded&Limit=1", "Limit").await;

    // A job's history: steps 5 to 8 of 20 are four steps.
    let steps = answer(&app, &format!("/api/v1/jobs/{id}/steps?from=5&to=8&max_points=10")).await;
    assert_eq!(steps["step"], serde_json::json!([5, 6, 7, 8]), "{steps}");
    refused(&app, &format!("/api/v1/jobs/{id}/steps?from=5&page=2"), "page").await;
    // The unknown name is refused before the job is looked up, and before a bad value.
    refused(&app, "/api/v1/jobs/not-a-job/steps?from=x&step=3", "step").await;

    let stats = answer(&app, &format!("/api/v1/jobs/{id}/layer-stats?layers=0&stat=grad_norm&max_points=10")).await;
    assert_eq!(stats["layers"].as_array().expect("layers").len(), 1, "{stats}");
    refused(&app, &format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm&stats=grad_max"), "stats").await;

    let events = answer(&app, &format!("/api/v1/jobs/{id}/events?limit=1000")).await;
    assert!(events["events"].is_array(), "{events}");
    refused(&app, &format!("/api/v1/jobs/{id}/events?since=3"), "since").await;

    // Uploads and corpora lists.
    for list in ["corpora", "models", "datasets"] {
        answer(&app, &format!("/api/v1/{list}?limit=5")).await;
        refused(&app, &format!("/api/v1/{list}?limit=5&offset=5"), "offset").await;
    }

    // The stream: a known query (the token included, which it alone may carry) opens it;
    // an unknown parameter is refused before the upgrade.
    let ws = app.address.replace("http://", "ws://");
    let (mut socket, _) = connect_async(format!("{ws}/api/v1/jobs/{id}/stream?every=5&layers=0&token=unused"))
        .await
        .expect("a known query opens the stream");
    let hello = loop {
        match socket.next().await.expect("a message").expect("websocket") {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).expect("json"),
            _ => continue,
        }
    };
    assert_eq!(hello["type"], "hello", "{hello}");
    match connect_async(format!("{ws}/api/v1/jobs/{id}/stream?every=5&evry=5")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("an unknown stream parameter must be refused, got {other:?}"),
    }
    refused(&app, &format!("/api/v1/jobs/{id}/stream?evry=5"), "evry").await;
    app.stop().await;
}

#[tokio::test]
async fn thousands_of_unknown_parameters_get_a_short_answer() {
    let app = spawn_app().await;
    let params: Vec<String> = (0..3000).map(|i| format!("p{i}=1")).collect();
    let path = format!("/api/v1/jobs?limit=2&{}", params.join("&"));
    let response = app.get(&path).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("body");
    assert!(text.len() < 400, "{} bytes: {text}", text.len());
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"]["field"], "p0");
    assert_eq!(
        body["error"]["message"],
        "unknown query parameters `p0`, `p1`, `p2`, `p3`, `p4` and 2995 more: this route takes `status`, `limit`, `offset`, `name`, `model`, `task`, `sort`, `order`"
    );
    // A very long name is cut.
    let long = "x".repeat(5000);
    let body: Value = app.get(&format!("/api/v1/corpora?{long}=1")).await.json().await.expect("json");
    assert_eq!(body["error"]["field"], format!("{}…", "x".repeat(64)));
    app.stop().await;
}
