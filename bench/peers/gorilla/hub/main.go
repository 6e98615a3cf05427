// Hub peer: gorilla/websocket in the shape of its chat example (one hub goroutine owning the
// subscriber sets; per client a read pump and a write pump joined by a buffered channel),
// speaking the bench's minimal JSON protocol: subscribe -> subscribed, publish -> message to
// every subscriber of the topic. Each queued message is written as its own frame.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

// Large enough that all-to-all rounds of 1,000 clients never overflow it.
const sendBuffer = 4096

type client struct {
	conn *websocket.Conn
	send chan []byte
}

type subscription struct {
	c     *client
	topic string
}

type publication struct {
	topic string
	msg   []byte
}

type hub struct {
	topics     map[string]map[*client]bool
	subscribe  chan subscription
	publish    chan publication
	unregister chan *client
}

type inbound struct {
	Type    string `json:"type"`
	Payload struct {
		Topic string          `json:"topic"`
		Data  json.RawMessage `json:"data"`
	} `json:"payload"`
}

type outPayload struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data,omitempty"`
}

type outbound struct {
	Type    string     `json:"type"`
	Payload outPayload `json:"payload"`
}

func (h *hub) run() {
	for {
		select {
		case s := <-h.subscribe:
			subs := h.topics[s.topic]
			if subs == nil {
				subs = make(map[*client]bool)
				h.topics[s.topic] = subs
			}
			subs[s.c] = true
			reply, _ := json.Marshal(outbound{Type: "subscribed", Payload: outPayload{Topic: s.topic}})
			h.deliver(s.c, reply)
		case p := <-h.publish:
			for c := range h.topics[p.topic] {
				h.deliver(c, p.msg)
			}
		case c := <-h.unregister:
			h.drop(c)
		}
	}
}

func (h *hub) deliver(c *client, msg []byte) {
	select {
	case c.send <- msg:
	default:
		h.drop(c) // too slow: disconnect, as the chat example does
	}
}

func (h *hub) drop(c *client) {
	found := false
	for _, subs := range h.topics {
		if subs[c] {
			delete(subs, c)
			found = true
		}
	}
	if found {
		close(c.send)
	}
}

func (c *client) readPump(h *hub) {
	defer func() {
		h.unregister <- c
		c.conn.Close()
	}()
	for {
		_, text, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		var in inbound
		if json.Unmarshal(text, &in) != nil {
			continue
		}
		switch in.Type {
		case "subscribe":
			h.subscribe <- subscription{c, in.Payload.Topic}
		case "publish":
			msg, _ := json.Marshal(outbound{Type: "message", Payload: outPayload{Topic: in.Payload.Topic, Data: in.Payload.Data}})
			h.publish <- publication{in.Payload.Topic, msg}
		}
	}
}

func (c *client) writePump() {
	defer c.conn.Close()
	for msg := range c.send {
		if err := c.conn.WriteMessage(websocket.TextMessage, msg); err != nil {
			return
		}
	}
	c.conn.WriteMessage(websocket.CloseMessage, []byte{})
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(*http.Request) bool { return true },
	// PEER_DEFLATE=1: negotiate permessage-deflate (gorilla: no context takeover, level 1).
	EnableCompression: os.Getenv("PEER_DEFLATE") == "1",
}

func main() {
	addr := "127.0.0.1:9007"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	h := &hub{
		topics:     make(map[string]map[*client]bool),
		subscribe:  make(chan subscription),
		publish:    make(chan publication),
		unregister: make(chan *client),
	}
	go h.run()
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := &client{conn: conn, send: make(chan []byte, sendBuffer)}
		go c.writePump()
		go c.readPump(h)
	})
	log.Printf("gorilla hub listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
