//! Hub peer: tokio-tungstenite on a current-thread runtime speaking the bench's minimal JSON
//! pub/sub protocol (subscribe -> subscribed, publish -> message to every subscriber), built
//! like tokio-tungstenite's chat example: one unbounded channel per client, a shared map of
//! senders, and the channel forwarded into the socket's write half.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_util::{future, pin_mut, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type Tx = UnboundedSender<Message>;

#[derive(Default)]
struct Topics {
    subscribers: HashMap<String, HashMap<u64, Tx>>,
}

type Shared = Arc<Mutex<Topics>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9003".to_string());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("tokio-tungstenite hub listening on {addr}");
    let state = Shared::default();
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                next_id += 1;
                tokio::spawn(serve(state.clone(), stream, next_id));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

async fn serve(state: Shared, stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (tx, rx) = unbounded();
    let (outgoing, incoming) = ws.split();

    let handle_incoming = incoming.try_for_each(|msg| {
        if let Message::Text(text) = msg {
            handle(&state, id, &tx, text.as_str());
        }
        future::ok(())
    });
    let to_socket = rx.map(Ok).forward(outgoing);
    pin_mut!(handle_incoming, to_socket);
    future::select(handle_incoming, to_socket).await;

    let mut topics = state.lock().unwrap();
    for subs in topics.subscribers.values_mut() {
        subs.remove(&id);
    }
}

fn handle(state: &Shared, id: u64, tx: &Tx, text: &str) {
    let Ok(v) = serde_json::from_str::<Value>(text) else { return };
    let topic = v["payload"]["topic"].as_str().unwrap_or_default().to_string();
    match v["type"].as_str() {
        Some("subscribe") => {
            let mut topics = state.lock().unwrap();
            topics.subscribers.entry(topic.clone()).or_default().insert(id, tx.clone());
            let reply = json!({"type": "subscribed", "payload": {"topic": topic}}).to_string();
            let _ = tx.unbounded_send(Message::text(reply));
        }
        Some("publish") => {
            let data = &v["payload"]["data"];
            let msg = json!({"type": "message", "payload": {"topic": topic, "data": data}}).to_string();
            let msg = Message::text(msg);
            let topics = state.lock().unwrap();
            if let Some(subs) = topics.subscribers.get(&topic) {
                for sub in subs.values() {
                    let _ = sub.unbounded_send(msg.clone());
                }
            }
        }
        _ => {}
    }
}
