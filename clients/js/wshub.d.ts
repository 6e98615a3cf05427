// Types for wshub.js, the dependency-free browser client of wshub.

export type State = "connecting" | "connected" | "disconnected" | "closed";

export interface WsHubOptions {
  /** Appended to the URL as `?token=...`. */
  token?: string;
  /** Called before every (re)connect and before the token expires (then sent as `refresh`). */
  getToken?: () => string | Promise<string>;
  /** Milliseconds before the token's `exp` to send `refresh` (default 30000). */
  refreshBefore?: number;
  /** Milliseconds of silence before an application `ping` (default 20000; 0: never). */
  pingInterval?: number;
  /** Milliseconds to wait for the `pong` before dropping the connection (default 10000). */
  pingTimeout?: number;
  /** First reconnect delay in milliseconds (default 250); doubles per failure. */
  minBackoff?: number;
  /** Longest reconnect delay in milliseconds (default 5000). */
  maxBackoff?: number;
  /** A WebSocket constructor, for environments without a global one. */
  WebSocket?: typeof WebSocket;
}

/** What a message handler learns besides the data. */
export interface MessageMeta {
  topic: string;
  /** The message's offset in its topic (absent when the server keeps no history). */
  offset?: number;
  /** The topic's epoch the offset belongs to. */
  epoch?: string;
}

/** The payload of a `subscribed` reply. */
export interface Subscribed {
  topic: string;
  /** The topic's last offset (with history). */
  offset?: number;
  epoch?: string;
  /** Present on re-subscriptions: whether every missed message was replayed. */
  recovered?: boolean;
}

export interface Ack {
  topic: string;
  /** Local subscribers that took the message (absent when history is kept in Redis). */
  delivered?: number;
  /** With history kept in Redis: the offset and epoch Redis gave the message. */
  offset?: number;
  epoch?: string;
  /** With a Redis backplane: whether the message was handed to Redis. */
  backplane?: boolean;
}

export class WsHub {
  constructor(url: string, options?: WsHubOptions);
  readonly url: string;
  readonly state: State;
  /** Resolved by the `subscribed` reply. */
  subscribe(topic: string, handler: (data: unknown, meta: MessageMeta) => void): Promise<Subscribed>;
  unsubscribe(topic: string): Promise<{ topic: string }>;
  /** Resolved by the `ack`, rejected by an `error` (or a lost connection). */
  publish(topic: string, data: unknown): Promise<Ack>;
  on(event: "state", fn: (state: State) => void): () => void;
  /** A re-subscription could not recover what was missed: reload the topic's state. */
  on(event: "unrecovered", fn: (topic: string, reply: Subscribed) => void): () => void;
  on(event: "broadcast", fn: (data: unknown) => void): () => void;
  on(event: "refreshed", fn: (payload: { exp: number }) => void): () => void;
  on(event: "error", fn: (error: Error) => void): () => void;
  close(): void;
}
