// wshub browser client: one dependency-free ES module.
//
//   import { WsHub } from "/wshub.js";
//   const hub = new WsHub("wss://example.com/ws", { token });
//   hub.on("state", (state) => console.log(state));        // "connected", "disconnected", "closed"
//   hub.on("unrecovered", (topic) => reloadFromServer(topic));
//   await hub.subscribe("news", (data, meta) => show(data, meta.offset));
//   await hub.publish("news", { headline: "hello" });       // resolves with the ack payload
//
// The client keeps one WebSocket open. When it drops, it reconnects with exponential backoff
// and jitter (capped at 5 s) and re-subscribes every topic with `since` (the last offset and
// epoch it saw), so when the server keeps history nothing is missed and nothing repeats; when
// it cannot recover (history off, too far behind, server restarted), the `subscribed` reply
// says `recovered: false` and the client emits "unrecovered" for that topic. A connection that
// stops answering the application `ping` within `pingTimeout` is dropped and replaced.

const DEFAULTS = {
  token: undefined, // appended to the URL as ?token=...
  getToken: undefined, // async () => token: used for every (re)connect and for `refresh`
  refreshBefore: 30_000, // ms before the token's `exp` to send `refresh`
  pingInterval: 20_000, // ms between application pings (0: none)
  pingTimeout: 10_000, // ms to wait for the pong before dropping the connection
  minBackoff: 250, // ms: first reconnect delay
  maxBackoff: 5_000, // ms: reconnect delays never exceed this
  WebSocket: undefined, // a WebSocket constructor (defaults to the global one)
};

export class WsHub {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.state = "connecting";
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> { resolve, reject, kind }
    this._topics = new Map(); // topic -> { handler, offset, epoch, subscribedOnce, waiters }
    this._listeners = new Map(); // event -> Set of functions
    this._attempt = 0;
    this._timers = { reconnect: 0, ping: 0, pong: 0, refresh: 0 };
    this._outbox = []; // messages waiting for a connection
    this._closed = false;
    this._connect();
  }

  /** Listen to "state", "unrecovered", "broadcast", "refreshed" or "error"; returns an unsubscriber. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  /** Subscribes to `topic`; resolves with the `subscribed` payload. */
  subscribe(topic, handler) {
    let entry = this._topics.get(topic);
    if (!entry) {
      entry = { handler, offset: undefined, epoch: undefined, subscribedOnce: false };
      this._topics.set(topic, entry);
    }
    entry.handler = handler;
    return this._request("subscribe", { topic, ...this._since(entry) });
  }

  /** Stops receiving `topic`; resolves with the `unsubscribed` payload. */
  unsubscribe(topic) {
    this._topics.delete(topic);
    return this._request("unsubscribe", { topic });
  }

  /** Publishes `data` to `topic`; resolves with the ack (`{topic, delivered}`, or `{topic, offset, epoch}`
   * when history is kept in Redis), rejects on error. */
  publish(topic, data) {
    return this._request("publish", { topic, data });
  }

  /** Closes for good: no reconnect; pending requests are rejected. */
  close() {
    this._closed = true;
    this._clearTimers();
    if (this._ws) {
      this._detach(this._ws);
      try {
        this._ws.close(1000);
      } catch (_) {
        // already closing
      }
      this._ws = null;
    }
    this._failPending(new Error("closed"));
    this._setState("closed");
  }

  // ----- internals -----

  _emit(event, ...args) {
    for (const fn of this._listeners.get(event) || []) {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", state);
  }

  // A topic seen before asks for what followed the last message it got (offset 0 and an empty
  // epoch when the server never told it one: the server then answers recovered:false).
  _since(entry) {
    if (!entry.subscribedOnce) return {};
    return { since: { offset: entry.offset || 0, epoch: entry.epoch || "" } };
  }

  _request(type, payload) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject, type, payload });
      this._send({ type, payload, id });
    });
  }

  _send(msg) {
    if (this._closed) {
      const p = msg.id !== undefined && this._pending.get(msg.id);
      if (p) {
        this._pending.delete(msg.id);
        p.reject(new Error("closed"));
      }
      return;
    }
    if (this._ws && this._ws.readyState === 1 && this.state === "connected") {
      this._ws.send(JSON.stringify(msg));
    } else if (msg.type !== "subscribe") {
      // Subscriptions are re-sent from `_topics` on connect; the rest waits in order.
      this._outbox.push(msg);
    }
  }

  async _connect() {
    if (this._closed) return;
    let url = this.url;
    let token = this.options.token;
    if (this.options.getToken) {
      try {
        token = await this.options.getToken();
      } catch (e) {
        this._emit("error", e);
        this._scheduleReconnect();
        return;
      }
      if (this._closed) return;
    }
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    this._token = token;
    const Impl = this.options.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(url);
    } catch (e) {
      this._emit("error", e);
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => this._onMessage(ws, ev.data);
    ws.onclose = () => this._onDrop(ws);
    ws.onerror = () => {}; // a close event follows
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._attempt = 0;
    this._setState("connected");
    // Re-subscribe every topic first (with `since`), then send what waited, in order.
    for (const [topic, entry] of this._topics) {
      const waiting = [...this._pending].find(([, p]) => p.type === "subscribe" && p.payload.topic === topic);
      const id = waiting ? waiting[0] : this._nextId++;
      if (!waiting) this._pending.set(id, { resolve() {}, reject() {}, type: "subscribe", payload: { topic } });
      ws.send(JSON.stringify({ type: "subscribe", payload: { topic, ...this._since(entry) }, id }));
    }
    const outbox = this._outbox;
    this._outbox = [];
    for (const msg of outbox) ws.send(JSON.stringify(msg));
    this._schedulePing();
    this._scheduleRefresh();
  }

  _onMessage(ws, text) {
    if (ws !== this._ws) return;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      this._emit("error", new Error("server sent invalid JSON"));
      return;
    }
    // Anything from the server proves the connection alive.
    this._schedulePing();
    const payload = msg.payload || {};
    switch (msg.type) {
      case "message":
        if (payload.topic === undefined) {
          this._emit("broadcast", payload.data);
          return;
        }
        this._onTopicMessage(payload);
        return;
      case "subscribed":
        this._onSubscribed(payload);
        break;
      case "refreshed":
        this._emit("refreshed", payload);
        this._scheduleRefresh(payload.exp);
        break;
      case "error":
        this._emit("error", new Error(payload.message));
        break;
    }
    if (msg.id !== undefined && this._pending.has(msg.id)) {
      const p = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      if (msg.type === "error") p.reject(new Error(payload.message));
      else p.resolve(payload);
    }
  }

  _onTopicMessage(payload) {
    const entry = this._topics.get(payload.topic);
    if (!entry) return;
    if (typeof payload.offset === "number") {
      // The server sends each offset once per connection; this also guards a stale replay.
      if (entry.offset !== undefined && payload.offset <= entry.offset) return;
      entry.offset = payload.offset;
    }
    entry.handler(payload.data, { topic: payload.topic, offset: payload.offset, epoch: entry.epoch });
  }

  _onSubscribed(payload) {
    const entry = this._topics.get(payload.topic);
    if (!entry) return;
    const resubscribe = entry.subscribedOnce;
    entry.subscribedOnce = true;
    if (payload.recovered === false || (resubscribe && payload.recovered === undefined)) {
      entry.offset = payload.offset;
      entry.epoch = payload.epoch;
      this._emit("unrecovered", payload.topic, payload);
      return;
    }
    if (payload.recovered !== true) {
      // A first subscribe: start from the topic's current position.
      entry.offset = payload.offset;
    }
    entry.epoch = payload.epoch;
  }

  _onDrop(ws) {
    if (ws !== this._ws) return;
    this._detach(ws);
    this._ws = null;
    this._clearTimers();
    // Subscriptions are re-sent on reconnect (their promises stay pending); other requests
    // may or may not have reached the server: the application decides whether to retry.
    for (const [id, p] of this._pending) {
      if (p.type !== "subscribe") {
        this._pending.delete(id);
        p.reject(new Error("connection lost"));
      }
    }
    if (this._closed) return;
    if (this.state === "connected") this._setState("disconnected");
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this._closed) return;
    const { minBackoff, maxBackoff } = this.options;
    const ceiling = Math.min(maxBackoff, minBackoff * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    // "Equal jitter": half the delay fixed, half random, so clients spread out yet back off.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => this._connect(), delay);
  }

  _schedulePing() {
    const { pingInterval, pingTimeout } = this.options;
    clearTimeout(this._timers.ping);
    clearTimeout(this._timers.pong);
    if (!pingInterval || !this._ws) return;
    const ws = this._ws;
    this._timers.ping = setTimeout(() => {
      if (ws !== this._ws || ws.readyState !== 1) return;
      ws.send(JSON.stringify({ type: "ping" }));
      this._timers.pong = setTimeout(() => {
        if (ws !== this._ws) return;
        // No answer: the connection is dead even if the browser has not noticed.
        this._emit("error", new Error("ping timeout"));
        try {
          ws.close();
        } catch (_) {
          // ignore
        }
        this._onDrop(ws);
      }, pingTimeout);
    }, pingInterval);
  }

  // With `getToken`, sends `refresh` with a new token before the current one expires (`exp`
  // read from the JWT, or from the server's last `refreshed`).
  _scheduleRefresh(exp) {
    clearTimeout(this._timers.refresh);
    if (!this.options.getToken) return;
    exp = exp || jwtExp(this._token);
    if (!exp) return;
    const wait = Math.max(1000, exp * 1000 - Date.now() - this.options.refreshBefore);
    this._timers.refresh = setTimeout(async () => {
      try {
        const token = await this.options.getToken();
        this._token = token;
        this._send({ type: "refresh", payload: { token } });
      } catch (e) {
        this._emit("error", e);
      }
    }, Math.min(wait, 2 ** 31 - 1));
  }

  _clearTimers() {
    for (const t of Object.values(this._timers)) clearTimeout(t);
  }

  _failPending(error) {
    for (const [, p] of this._pending) p.reject(error);
    this._pending.clear();
    this._outbox = [];
  }
}

// The `exp` claim of a JWT, if `token` is one.
function jwtExp(token) {
  if (typeof token !== "string") return undefined;
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch (_) {
    return undefined;
  }
}
