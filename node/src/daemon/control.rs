//! The control API: HTTP/JSON on 127.0.0.1, every request authenticated with the bearer token
//! from `<home>/control.json`.
//!
//! ```text
//! GET  /v1/health    -> {"peer_id": "12D3KooW...", "version": "0.1.0"}
//! POST /v1/command   {"args": ["contacts", "list", "--json"], "cwd": "/abs/dir"}
//!                    -> {"code": 0, "stdout": "...", "stderr": "..."}
//! GET  /v1/events    -> text/event-stream: `event: <type>` + `data: <JSON with "type">`
//! ```
//!
//! `/v1/command` runs one CLI command line in the node against its open database, exactly as
//! the CLI would (same output, messages and exit codes); commands run one at a time. `cwd` is
//! optional: relative file paths (`profile set --picture`, `contacts import`, `export --out`)
//! are taken from it, and refused without it. The node reads and writes those files itself,
//! as the same user on the same machine. `--home` and `run` are refused.
//!
//! Errors other than a command's own are `{"error": "..."}` with a 4xx/5xx status: 401 for a
//! missing or wrong token, 413 for a body over [`MAX_REQUEST_BODY_BYTES`], 503 beyond
//! [`MAX_CONCURRENT_REQUESTS`] requests or [`MAX_EVENT_SUBSCRIBERS`] event streams.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, Semaphore};

use super::events::{Event, Events};
use super::shutdown::Shutdown;
use super::{Db, DriverSlot};
use crate::home::Home;

/// Largest request body accepted (a command line is far smaller).
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;
/// Requests handled at once (event streams not counted); more get 503.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;
/// Open `GET /v1/events` streams at once; more get 503.
pub const MAX_EVENT_SUBSCRIBERS: usize = 16;

/// What the handlers share.
pub struct Api {
    pub token: String,
    pub peer_id: String,
    pub home: Home,
    pub db: Db,
    pub events: Events,
    pub shutdown: Shutdown,
    /// The running engine, once the network is up.
    pub driver: DriverSlot,
    requests: Arc<Semaphore>,
    subscribers: Arc<Semaphore>,
}

impl Api {
    pub fn new(
        token: String,
        peer_id: String,
        home: Home,
        db: Db,
        events: Events,
        shutdown: Shutdown,
        driver: DriverSlot,
    ) -> Api {
        Api {
            driver,
            token,
            peer_id,
            home,
            db,
            events,
            shutdown,
            requests: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
            subscribers: Arc::new(Semaphore::new(MAX_EVENT_SUBSCRIBERS)),
        }
    }
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/command", post(command))
        .route("/v1/events", get(events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Layers run outside in: the limit, then the token check, then the route.
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(middleware::from_fn_with_state(api.clone(), limit))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .with_state(api)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn limit(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    match api.requests.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many concurrent requests (at most {MAX_CONCURRENT_REQUESTS})"),
        ),
    }
}

/// Requires `Authorization: Bearer <token>`, compared in constant time.
async fn authenticate(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(api.token.as_bytes())));
    if !ok {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <token>` with the token from control.json",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    next.run(req).await
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint (try /v1/health, /v1/command or /v1/events)",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "wrong method (GET /v1/health, POST /v1/command, GET /v1/events)",
    )
}

#[derive(Serialize)]
struct Health<'a> {
    peer_id: &'a str,
    version: &'static str,
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    Json(Health {
        peer_id: &api.peer_id,
        version: env!("CARGO_PKG_VERSION"),
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    args: Vec<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
}

async fn command(
    State(api): State<Arc<Api>>,
    body: Result<Json<CommandRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    if let Some(cwd) = &req.cwd {
        if !cwd.is_absolute() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cwd {} is not an absolute path", cwd.display()),
            );
        }
    }
    let task_api = api.clone();
    let joined = tokio::task::spawn_blocking(move || {
        // One command at a time, as when each CLI process held the database alone.
        let store = task_api.db.lock().unwrap_or_else(|p| p.into_inner());
        let driver = task_api.driver.get().cloned();
        let run = crate::cli::run_in_node(
            &store,
            &task_api.home,
            &req.args,
            req.cwd.as_deref(),
            driver,
        );
        (run, req.args)
    })
    .await;
    match joined {
        Ok((run, args)) => {
            // The command's name only: its values hold phone numbers and names.
            tracing::info!(command = run.name, code = run.reply.code, "command");
            if run.changed {
                api.events.publish(Event::Command { args });
            }
            Json(run.reply).into_response()
        }
        Err(e) => {
            tracing::error!("a command failed to complete: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the command failed unexpectedly; see the node's log",
            )
        }
    }
}

async fn events(State(api): State<Arc<Api>>) -> Response {
    let Ok(permit) = api.subscribers.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event subscribers (at most {MAX_EVENT_SUBSCRIBERS})"),
        );
    };
    // Subscribed before the response starts, so a client that has the headers sees every
    // event published afterwards.
    let rx = api.events.subscribe();
    let state = (rx, api.shutdown.clone(), permit);
    let stream = futures::stream::unfold(state, |(mut rx, mut shutdown, permit)| async move {
        let event = tokio::select! {
            _ = shutdown.wait() => return None,
            r = rx.recv() => match r {
                Ok(e) => sse(e.kind(), &e),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    sse("lagged", &json!({"type": "lagged", "missed": missed}))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((Ok::<_, Infallible>(event), (rx, shutdown, permit)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn sse(kind: &str, data: &impl Serialize) -> SseEvent {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_string());
    SseEvent::default().event(kind).data(data)
}
