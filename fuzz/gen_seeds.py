#!/usr/bin/env python3
"""Writes the small committed seed corpora under fuzz/corpus/TARGET/.

The input formats are the ones decoded in fuzz/src/checks.rs (see each check_* function).
Run from anywhere: python3 fuzz/gen_seeds.py
"""
import base64
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def mask(payload, key=KEY):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode, payload=b"", fin=True, masked=True, key=KEY):
    out = bytearray([(0x80 if fin else 0) | opcode])
    mbit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        out.append(mbit | n)
    elif n <= 0xFFFF:
        out.append(mbit | 126)
        out += struct.pack(">H", n)
    else:
        out.append(mbit | 127)
        out += struct.pack(">Q", n)
    if masked:
        out += key
        out += mask(payload, key)
    else:
        out += payload
    return bytes(out)


def close(code=None, reason=b""):
    return frame(0x8, b"" if code is None else struct.pack(">H", code) + reason)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- frame_parser: max u16 LE, n u8, n chunk sizes, stream ---------------------------------
def fp(name, stream, max_size=4096, sizes=b""):
    write("frame_parser", name, struct.pack("<H", max_size) + bytes([len(sizes)]) + sizes + stream)


fp("text_hello", frame(0x1, b"Hello"))
fp("binary_200_split", frame(0x2, bytes(range(200))), sizes=bytes([3, 7]))
fp("fragmented_text", frame(0x1, b"Hel", fin=False) + frame(0x0, b"lo"), sizes=bytes([1]))
fp("fragmented_ping_between",
   frame(0x2, b"ab", fin=False) + frame(0x9, b"hi") + frame(0x0, b"cd", fin=False) + frame(0x0, b"ef"),
   sizes=bytes([5, 0, 9]))
fp("ping_pong", frame(0x9, b"ping") + frame(0xA, b"pong") + frame(0x9, b""))
fp("close_1000_bye", frame(0x1, b"x") + close(1000, b"bye"))
fp("close_empty", close())
fp("utf8_split_fragments",
   frame(0x1, "κό".encode()[:3], fin=False) + frame(0x0, "κόσμε".encode()[3:]), sizes=bytes([2]))
fp("too_big", frame(0x2, bytes(20)), max_size=10)
fp("invalid_utf8", frame(0x1, b"ab\xff"))
fp("len64_too_big", bytes([0x82, 0xFF]) + struct.pack(">Q", 70000) + KEY + b"abc")
fp("unmasked", frame(0x1, b"plain", masked=False))
fp("mixed_stream",
   frame(0x1, b"one") + frame(0x9, b"p") + frame(0x2, bytes(130)) + frame(0x1, b"tw", fin=False)
   + frame(0xA) + frame(0x0, b"o") + close(3000, b"done") + frame(0x1, b"after"),
   sizes=bytes([0, 5, 200, 1]))

# --- handshake: flags u8 (policy/max head), n u8, n chunk sizes, request bytes -------------
RFC = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
       b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
       b"Sec-WebSocket-Version: 13\r\n\r\n")


def hs(name, request, flags=0x05, sizes=b""):
    write("handshake", name, bytes([flags, len(sizes)]) + sizes + request)


def req(headers, line=b"GET /ws HTTP/1.1", eol=b"\r\n"):
    return line + eol + b"".join(h + eol for h in headers) + eol


BASE = [b"Host: example.com", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]
hs("rfc_example", RFC)
hs("rfc_example_bytewise", RFC, sizes=bytes([1]))
hs("same_host_origin", req(BASE + [b"Origin: https://example.com"]), flags=0x00, sizes=bytes([17, 3]))
hs("bare_lf", req(BASE, eol=b"\n"), flags=0x02)
hs("version_8", req(BASE[:4] + [b"Sec-WebSocket-Version: 8"]))
hs("missing_key", req(BASE[:3] + BASE[4:]))
hs("short_key", req(BASE[:3] + [b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=", BASE[4]]))
hs("duplicate_key", req(BASE + [b"sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA=="]))
hs("post", req(BASE, line=b"POST /ws HTTP/1.1"))
hs("plain_get", req([b"Host: example.com", b"Accept: */*"], line=b"GET /index.html HTTP/1.1"))
hs("too_large", req(BASE + [b"X-Pad: " + b"a" * 200]), flags=0x10)
hs("token_lists", req([b"host: example.com", b"upgrade: h2c, WebSocket", b"connection: keep-alive, Upgrade",
                       b"sec-websocket-key:   AQIDBAUGBwgJCgsMDQ4PEA==  ", b"sec-websocket-version: 13",
                       b"sec-websocket-protocol: mqtt", b"Sec-WebSocket-Protocol: wshub.v1"]), flags=0x07)


# --- connection ---------------------------------------------------------------------------
# policy u8, limits u8, final chunk u8, head (flags u16 LE, 16 key bytes, extra blob), ops.
def conn(name, ops, policy=0x01, limits=0x03, final_chunk=0, head_flags=0, extra=b""):
    data = bytes([policy, limits, final_chunk]) + struct.pack("<H", head_flags) + bytes(range(16))
    data += bytes([len(extra)]) + extra + b"".join(ops)
    write("connection", name, data)


OPS = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]


def op_frame(opcode, fin=True, flags=0, key=KEY, n=None, blob=b"", code_sel=0, code=b""):
    """A structured frame op; payload fields follow checks::build_frame."""
    b0 = (0x80 if fin else 0) | OPS.index(opcode)
    out = bytes([0, b0, flags]) + key
    if opcode == 0x8 and not flags & 0x20:
        out += bytes([code_sel]) + code + bytes([len(blob)]) + blob
    elif opcode & 0x8 and not flags & 0x10:
        out += bytes([len(blob)]) + blob
    else:
        out += struct.pack("<H", n or 0)
    return out


def deliver(n):
    return bytes([4, n - 1])


def tick(ms):
    return bytes([5]) + struct.pack("<H", ms // 4)


def send(text, binary=False):
    return bytes([6 | (0x80 if binary else 0)]) + struct.pack("<H", len(text)) + text


def server_close(code, reason=b""):
    return bytes([7]) + struct.pack("<H", code) + bytes([len(reason)]) + reason


def raw(b):
    return bytes([3, len(b)]) + b


conn("text_then_close", [op_frame(0x1, n=11), op_frame(0x8, blob=b"bye")], final_chunk=255)
conn("everything_small_reads",
     [op_frame(0x9, blob=b"hi"), op_frame(0x2, n=300), op_frame(0x1, fin=False, n=5), op_frame(0xA),
      op_frame(0x0, n=7), deliver(3), deliver(40), op_frame(0x8, code_sel=1, code=b"\x00", blob=b"")],
     final_chunk=6)
conn("heartbeat_timeout", [deliver(255), deliver(255), tick(1000), op_frame(0xA), deliver(20), tick(1200),
                           tick(3000), tick(3000)], limits=0x0F)
conn("server_close_echo", [deliver(255), deliver(255), send(b"hello"), server_close(1001, b"going away"),
                           op_frame(0x1, n=3), op_frame(0x8, code_sel=0)], limits=0x03)
conn("server_close_timeout", [deliver(255), deliver(255), server_close(1000), tick(600)], limits=0x13)
conn("server_sends", [send(b"abc"), send(b"\x00\x01", binary=True), deliver(255), deliver(255),
                      send(b"x" * 140), op_frame(0x2, n=2)])
conn("no_version_426", [op_frame(0x1, n=3)], head_flags=1 << 5)
conn("bare_lf_subprotocol", [op_frame(0x1, n=20)], policy=0x07, head_flags=(1 << 12) | (1 << 9))
conn("corrupt_frames", [op_frame(0x1, n=5, flags=0x05), op_frame(0x2, n=9, flags=0x02),
                        op_frame(0x9, flags=0x01)], final_chunk=2)
conn("too_big", [op_frame(0x2, n=200), op_frame(0x1, n=10)], limits=0x01)
conn("origin_same_host", [op_frame(0x1, n=4)], policy=0x00, head_flags=(1 << 8) | (1 << 15))
conn("extra_header_and_raw", [raw(b"\x81\x80abcd"), op_frame(0x1, n=2)], head_flags=1 << 10,
     extra=b"X-Forwarded-For: 10.0.0.1")


# --- hub_message: config u8, then ops (see fuzz/src/hub_checks.rs) ------------------------
TYPES = ["ping", "subscribe", "unsubscribe", "publish", "broadcast", "ping_escaped", "nope", "5", "array"]
TOPICS = ["news", "sport", "quote_nl", "news_escaped", "", "nihon", "emoji", "8", "9"]


def msg(client, kind, topic=0, data=0, id_choice=8, shape=0, extra=b""):
    """A structured message op; id_choice with bit 3 set means no id (else IDS[id_choice % 8])."""
    tag = (client << 4) | 1
    return bytes([tag, shape, TYPES.index(kind), topic, data, id_choice]) + extra


def raw_text(client, text):
    return bytes([client << 4]) + struct.pack("<H", len(text)) + text


def hub(name, ops, cfg=0x00):
    write("hub_message", name, bytes([cfg]) + b"".join(ops))


hub("ping_with_ids", [msg(0, "ping", id_choice=0), msg(1, "ping", id_choice=2), msg(2, "ping_escaped", id_choice=3),
                      msg(3, "ping", id_choice=4)])
hub("subscribe_publish_unsubscribe",
    [msg(0, "subscribe"), msg(1, "subscribe"), msg(1, "subscribe"), msg(2, "publish", data=1, id_choice=1),
     msg(1, "unsubscribe", id_choice=0), msg(2, "publish", data=2), msg(0, "unsubscribe", topic=3),
     msg(3, "publish", data=3, id_choice=0)])
hub("broadcast_allowed", [msg(0, "subscribe", topic=5), msg(1, "broadcast", data=2, id_choice=0, shape=4),
                          msg(2, "broadcast", data=4, shape=3)], cfg=0x10)
hub("broadcast_disabled", [msg(1, "broadcast", data=1, id_choice=5, shape=4)])
hub("doc_examples", [raw_text(0, b'{"type":"ping","id":1}'),
                     raw_text(1, b'{"type":"subscribe","payload":{"topic":"news"}}'),
                     raw_text(2, b'{"type":"publish","payload":{"topic":"news","data":{"h":"hi"}},"id":"p1"}'),
                     raw_text(1, b'{"type":"unsubscribe","payload":{"topic":"news"}}'),
                     raw_text(3, b'{"type":"broadcast","payload":{"data":"hello all"},"id":9}')], cfg=0x10)
hub("errors", [msg(0, "nope", id_choice=1), msg(0, "subscribe", topic=4, id_choice=0), msg(0, "5"),
               msg(1, "subscribe", shape=0x40, extra=b"\x02"), msg(1, "publish", shape=5, id_choice=6),
               msg(2, "subscribe", shape=0x08, id_choice=0), msg(2, "subscribe", shape=0x10),
               msg(3, "array")], cfg=0x01)
hub("too_many_subscriptions", [msg(0, "subscribe", topic=0), msg(0, "subscribe", topic=1),
                               msg(0, "subscribe", topic=2, id_choice=0), msg(0, "subscribe", topic=0)], cfg=0x04)
hub("slow_consumer", [msg(0, "subscribe"), msg(1, "subscribe"), bytes([0x06]), msg(2, "publish", id_choice=0),
                      bytes([0x06]), msg(2, "publish", id_choice=0)])
hub("disconnect", [msg(0, "subscribe"), msg(0, "subscribe", topic=6), msg(1, "subscribe", topic=6), bytes([0x05]),
                   msg(2, "publish", topic=6, id_choice=0), bytes([0x15]), msg(2, "publish", topic=6, id_choice=0)])
hub("binary_and_malformed", [bytes([0x07]), raw_text(1, b'{"type":"ping"'), raw_text(1, b'["ping"]'),
                             raw_text(2, b'{"type":"ping","type":"ping","id":3}'), raw_text(3, b' \n{"type":"ping"}'),
                             raw_text(0, b'{"type":"subscribe","payload":{"topic":"a\\u0000b"},"id":null}')])


# ---- backplane: settings byte, URL blob, then ops (low nibble: 0 timer, 1 want topic, 2 unwant,
# 3 publish, even >= 4 bytes for SUB, odd for PUB; high nibble: clock step of 50 ms)
def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def resp_msg(channel, payload):
    return b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload)


def feed(which, data):
    op = 0x14 if which == "sub" else 0x15
    return bytes([op]) + struct.pack("<H", len(data)) + data


def bp(name, url, ops, settings=0x02):
    write("backplane", name, bytes([settings, len(url)]) + url + b"".join(ops))


SUBOK = b"*3\r\n" + bulk(b"subscribe") + bulk(b"wshub:broadcast") + b":1\r\n"
OTHER = b"N0000000000000001 "
bp("handshake_then_messages", b"redis://127.0.0.1:6379",
   [feed("pub", b"+PONG\r\n"), feed("sub", SUBOK), bytes([0x01, 4]) + b"news",
    feed("sub", resp_msg(b"wshub:topic:news", OTHER + b'{"h":1}')),
    feed("sub", resp_msg(b"wshub:broadcast", OTHER + b'"all"')),
    bytes([0x03]), feed("pub", b":2\r\n"), bytes([0x02, 4]) + b"news"])
bp("own_node_and_garbage", b"redis://u:p@host:1/3",
   [feed("pub", b"+PONG\r\n"), feed("sub", SUBOK),
    feed("sub", resp_msg(b"wshub:topic:x", b"N123456789abcdef0 [1]")),
    feed("sub", resp_msg(b"other:topic:x", OTHER + b"1")),
    feed("sub", resp_msg(b"wshub:topic:x", b"Nzzzz000000000001 1")),
    feed("sub", resp_msg(b"wshub:topic:x", OTHER + b"[[[[")),
    feed("sub", resp_msg(b"wshub:topic:\xff", OTHER + b"1"))])
bp("split_replies_and_errors", b"rediss://[::1]:6380",
   [feed("pub", b"+PO"), feed("pub", b"NG\r\n"), feed("sub", SUBOK[:9]), feed("sub", SUBOK[9:]),
    feed("pub", b"-ERR nope\r\n"), bytes([0xf0]), bytes([0xf0]), feed("sub", b"not resp at all")])
bp("auth_refused", b"redis://:secret@127.0.0.1",
   [feed("pub", b"-WRONGPASS invalid\r\n"), bytes([0x50]), feed("sub", b"+OK\r\n")], settings=0x00)


# ---- config: TOML text
def cf(name, text):
    write("config", name, text.encode())


cf("example", open(os.path.join(os.path.dirname(__file__), "..", "wshub.example.toml")).read()
   if os.path.exists(os.path.join(os.path.dirname(__file__), "..", "wshub.example.toml")) else "")
cf("flat", 'listen = "127.0.0.1:9000"\nmax-connections = 100\nsend-queue = 64\n')
cf("tables", '[limits]\nmax-message-size = 1024\n[redis]\nurl = "redis://127.0.0.1"\n')
cf("bad_values", 'send-queue = 0\nmax-message-size = -1\nunknown = true\nlisten = 5\n')
cf("syntax_error", 'listen = "127.0.0.1\nsend-queue = [1,\n')


# History kept in Redis (settings bit 3): ops 4 and 5 ask for an append and a position, so
# feeds use 6 (SUB) and 7 (PUB). The handshake loads both scripts (their SHAs, as Redis answers).
def script(name):
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../src/backplane/shared.rs")).read()
    start = src.index("pub const %s: &str = \"\\\n" % name) + len("pub const %s: &str = \"\\\n" % name)
    return src[start:src.index("\";", start)].encode()


def hfeed(which, data):
    op = 0x16 if which == "sub" else 0x17
    return bytes([op]) + struct.pack("<H", len(data)) + data


SHAS = b"".join(bulk(hashlib.sha1(script(n)).hexdigest().encode()) for n in ("APPEND_SCRIPT", "POSITION_SCRIPT"))
EPOCH = b"0123456789abcdef"
bp("history_in_redis", b"redis://127.0.0.1:6379",
   [hfeed("pub", SHAS + b"+PONG\r\n"), hfeed("sub", SUBOK), bytes([0x01, 1]) + b"t",
    hfeed("sub", b"*3\r\n" + bulk(b"subscribe") + bulk(b"wshub:topic:t") + b":2\r\n"),
    bytes([0x04, 0, 0]), bytes([0x05, 6, 16]) + EPOCH,
    hfeed("pub", b"*2\r\n" + bulk(EPOCH) + b":4\r\n" + b"*5\r\n" + bulk(EPOCH) + b":5\r\n:1000\r\n"
          + bulk(b"4 999 1") + bulk(b"5 999 [2]")),
    hfeed("sub", resp_msg(b"wshub:topic:t", b"E" + EPOCH + b" 6 [6]")),
    hfeed("sub", resp_msg(b"wshub:topic:t", b"E" + EPOCH + b" x [6]"))], settings=0x0a)


# http_request: policy byte (bit 0 API key, 1 loopback peer, 2 history, 3 demo page, 4-5 origin
# policy, 6 the key is empty), limits byte (bits 0-2 body limit 0/16/300/64K/1M, 3-4 head
# limit), chunk sizes, then the request. See fuzz/src/http_checks.rs.
def hr(name, request, policy=0x02, limits=0x03, sizes=b""):
    write("http_request", name, bytes([policy, limits, len(sizes)]) + sizes + request)


def http(line, headers, body=b"", length=True):
    out = line + b"\r\n"
    for name, value in headers:
        out += name + b": " + value + b"\r\n"
    if length and body:
        out += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return out + b"\r\n" + body


LOCAL = [(b"Host", b"localhost:8080"), (b"Content-Type", b"application/json")]
KEYED = [(b"Host", b"example.com"), (b"Content-Type", b"application/json; charset=utf-8"),
         (b"Authorization", b"Bearer fuzz-key")]
PUB = b'{"topic":"news","data":{"x":[1,2,"\\u00e9"]}}'
hr("publish_local", http(b"POST /publish HTTP/1.1", LOCAL, PUB))
hr("publish_pieces_continue", http(b"POST /publish?x=1 HTTP/1.1", LOCAL + [(b"Expect", b"100-continue")], PUB),
   sizes=bytes([40, 1, 0, 7]))
hr("publish_history", http(b"POST /publish HTTP/1.1", LOCAL, b'{"data":5,"topic":"sport"}'), policy=0x06)
hr("publish_escaped_topic", http(b"POST /publish HTTP/1.1", LOCAL, b'{"topic":"a\\"b","data":null}'))
hr("publish_unicode_topic", http(b"POST /publish HTTP/1.1", LOCAL, '{"topic":"日本","data":"ü"}'.encode()))
hr("publish_nobody_listens", http(b"POST /publish HTTP/1.1", LOCAL, b'{"topic":"none","data":[]}'))
hr("publish_absolute_form", http(b"POST http://localhost/publish HTTP/1.1", LOCAL, PUB))
hr("publish_http10_no_host", http(b"POST /publish HTTP/1.0", [(b"Content-Type", b"application/json")], PUB))
hr("broadcast_key", http(b"POST /broadcast HTTP/1.1", KEYED, b'{"data":{"k":true}}'), policy=0x01)
hr("broadcast_wrong_key", http(b"POST /broadcast HTTP/1.1",
                               KEYED[:2] + [(b"Authorization", b"bearer nope")], b'{"data":1}'), policy=0x01)
hr("publish_remote_no_key", http(b"POST /publish HTTP/1.1", LOCAL, PUB), policy=0x00)
hr("publish_empty_key", http(b"POST /publish HTTP/1.1", LOCAL, PUB), policy=0x43)
hr("publish_text_plain", http(b"POST /publish HTTP/1.1", [(b"Host", b"127.0.0.1"), (b"Content-Type", b"text/plain")], PUB))
hr("publish_foreign_origin", http(b"POST /publish HTTP/1.1", LOCAL + [(b"Origin", b"http://evil.test")], PUB))
hr("publish_allowed_origin", http(b"POST /publish HTTP/1.1", LOCAL + [(b"Origin", b"http://localhost:8080")], PUB),
   policy=0x22)
hr("publish_rebinding_host", http(b"POST /publish HTTP/1.1", [(b"Host", b"evil.test"), LOCAL[1]], PUB))
hr("publish_too_large", http(b"POST /publish HTTP/1.1", LOCAL, PUB), limits=0x01)
hr("publish_invalid_json", http(b"POST /publish HTTP/1.1", LOCAL, b'{"topic":"news","data":}'))
hr("publish_not_utf8", http(b"POST /publish HTTP/1.1", LOCAL, b'{"topic":"\xff","data":1}'))
hr("publish_no_length", http(b"POST /publish HTTP/1.1", LOCAL, b"", length=False) + PUB)
hr("publish_chunked", http(b"POST /publish HTTP/1.1", LOCAL + [(b"Transfer-Encoding", b"chunked")], b"", length=False)
   + b"5\r\nhello\r\n0\r\n\r\n")
hr("publish_chunked_and_length", http(b"POST /publish HTTP/1.1", LOCAL + [(b"Transfer-Encoding", b"chunked")], PUB))
hr("publish_two_lengths", http(b"POST /publish HTTP/1.1", LOCAL + [(b"Content-Length", b"3")], PUB))
hr("publish_huge_length", http(b"POST /publish HTTP/1.1", LOCAL + [(b"Content-Length", b"1000000")], b"",
                                length=False) + PUB, limits=0x04, sizes=bytes([60, 3]))
hr("publish_overflowing_length", http(b"POST /publish HTTP/1.1",
                                      LOCAL + [(b"Content-Length", b"99999999999999999999999")], b"", length=False))
hr("two_hosts", http(b"GET /healthz HTTP/1.1", [(b"Host", b"a"), (b"Host", b"b")]))
hr("no_host", http(b"GET /healthz HTTP/1.1", []))
hr("healthz", http(b"GET /healthz HTTP/1.1", [(b"Host", b"localhost")]), sizes=bytes([3]))
hr("head_metrics", http(b"HEAD /metrics HTTP/1.1", [(b"Host", b"localhost")]), policy=0x06)
hr("head_chunked", http(b"HEAD /healthz HTTP/1.1", [(b"Host", b"x"), (b"Transfer-Encoding", b"gzip")]))
hr("client_js", http(b"GET /wshub.js HTTP/1.1", [(b"Host", b"localhost")]))
hr("demo", http(b"GET /?q HTTP/1.1", [(b"Host", b"localhost")]), policy=0x0a)
hr("not_found", http(b"GET /nope HTTP/1.1", [(b"Host", b"localhost")]))
hr("wrong_method", http(b"DELETE /publish HTTP/1.1", LOCAL, PUB))
hr("malformed", b"GET /\x01 HTTP/1.1\r\n\r\n")
hr("head_too_large", http(b"GET /healthz HTTP/1.1", [(b"Host", b"localhost"), (b"X-Pad", b"p" * 200)]),
   limits=0x13)
