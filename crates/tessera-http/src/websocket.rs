//! The R4 websocket channel of Subscriptions (`GET /fhir/$subscription-websocket`, an
//! upgrade carrying the bearer token like any request): the client sends
//! `bind {subscription-id}` and is answered `bound {id}`, then receives `ping {id}` for each
//! notification of that subscription. Only a subject of the subscription's owning trust may
//! bind (another organisation's subscription is answered as absent: `error {id}: …`).

use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;
use tessera_engine::subscription::WebsocketBinding;
use tessera_engine::{Access, Engine};

/// The upgrade.
pub async fn subscription_websocket(State(state): State<AppState>, Extension(access): Extension<Access>, ws: WebSocketUpgrade) -> Response {
    let engine = state.engine.clone();
    ws.on_upgrade(move |socket| session(engine, access, socket))
}

async fn session(engine: Engine, access: Access, mut socket: WebSocket) {
    let mut bindings: Vec<WebsocketBinding> = Vec::new();
    let mut pings: Option<tokio::sync::broadcast::Receiver<String>> = None;
    loop {
        let ping = async {
            match pings.as_mut() {
                Some(r) => loop {
                    match r.recv().await {
                        Ok(id) => return Some(id),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return None,
                    }
                },
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            message = socket.recv() => Event::Message(message),
            id = ping => Event::Ping(id),
        };
        match event {
            Event::Message(Some(Ok(Message::Text(text)))) => {
                let text = text.as_str().trim();
                let reply = match text.strip_prefix("bind ").map(str::trim) {
                    Some(id) => match engine.bind_websocket(&access, id) {
                        Ok(b) => {
                            if pings.is_none() {
                                pings = Some(b.receiver.resubscribe());
                            }
                            bindings.push(b);
                            format!("bound {id}")
                        }
                        Err(e) => format!("error {id}: {e}"),
                    },
                    None => format!("error: unknown request '{}' (send: bind [subscription id])", text.chars().take(64).collect::<String>()),
                };
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
            Event::Message(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return,
            Event::Message(Some(Ok(_))) => {}
            Event::Ping(Some(id)) => {
                if bindings.iter().any(|b| b.subscription() == id) && socket.send(Message::Text(format!("ping {id}").into())).await.is_err() {
                    return;
                }
            }
            Event::Ping(None) => return,
        }
    }
}

enum Event {
    Message(Option<Result<Message, axum::Error>>),
    Ping(Option<String>),
}
