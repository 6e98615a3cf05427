//! Echo peer: tokio-tungstenite on a current-thread runtime, one task per connection, the read
//! half forwarded straight into the write half (data messages only).

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".to_string());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("tokio-tungstenite echo listening on {addr}");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (sink, source) = ws.split();
    let _ = source.try_filter(|m| future::ready(m.is_text() || m.is_binary())).forward(sink).await;
}
