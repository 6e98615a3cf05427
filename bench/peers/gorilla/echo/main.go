// Echo peer: gorilla/websocket, one goroutine per connection reading a message and writing
// it back. Run with GOMAXPROCS=1 for a one-core comparison.
package main

import (
	"log"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(*http.Request) bool { return true },
	// PEER_DEFLATE=1: negotiate permessage-deflate (gorilla: no context takeover, level 1).
	EnableCompression: os.Getenv("PEER_DEFLATE") == "1",
}

func echo(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		kind, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(kind, msg); err != nil {
			return
		}
	}
}

func main() {
	addr := "127.0.0.1:9006"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	http.HandleFunc("/ws", echo)
	log.Printf("gorilla echo listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
