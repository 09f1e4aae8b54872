//! The admin HTTP API, on a control thread of its own: never on the
//! packet path. It reads what the shards publish ([`ShardStats`]) and
//! nothing else, so a slow or hostile client costs the shards nothing.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::{self, ShardStats};

/// What the handlers read.
#[derive(Clone)]
struct Control {
    shards: Arc<[Arc<ShardStats>]>,
}

/// Binds `address` now (so that a taken port fails at start-up, with the
/// address in the error) and serves the API on a thread named `admin`.
pub fn start(address: SocketAddr, shards: Vec<Arc<ShardStats>>) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let control = Control {
        shards: shards.into(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("admin".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "admin API: cannot listen");
                        return;
                    }
                };
                if let Err(error) = axum::serve(listener, router(control)).await {
                    tracing::error!(%error, "admin API stopped");
                }
            })
        })
}

fn router(control: Control) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(control)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(control): State<Control>) -> impl IntoResponse {
    let shards: Vec<&ShardStats> = control.shards.iter().map(|s| &**s).collect();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics::render(&shards),
    )
}
