"""permessage-deflate against the `websockets` client (which offers it by default), in echo and
hub mode: negotiation, compressed echo of every size, fragmented compressed messages, the size
limit on inflated data, and hub fan-out to compressed and plain subscribers alike."""

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate

from conftest import client, run

def deflate_of(ws):
    """The negotiated PerMessageDeflate extension, or None."""
    found = [e for e in ws.protocol.extensions if isinstance(e, PerMessageDeflate)]
    return found[0] if found else None


def test_default_offer_is_accepted_without_context_takeover(deflate_echo_server):
    async def check():
        async with client(deflate_echo_server.url) as ws:
            header = ws.response.headers["Sec-WebSocket-Extensions"]
            assert header == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ext = deflate_of(ws)
            assert ext is not None
            assert ext.remote_no_context_takeover and ext.local_no_context_takeover

    run(check())


def test_without_the_flag_the_offer_is_declined(echo_server):
    async def check():
        async with client(echo_server.url) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert deflate_of(ws) is None
            await ws.send("plain")
            assert await ws.recv() == "plain"

    run(check())


@pytest.mark.parametrize("size", [0, 1, 125, 126, 4096, 65536, 1 << 20])
def test_compressed_echo(deflate_echo_server, size):
    text = (json.dumps({"type": "message", "payload": {"n": 1, "text": "κόσμε wshub"}}) * (size // 50 + 1))[:size]
    binary = bytes((i * 7) % 251 for i in range(size))

    async def check():
        async with client(deflate_echo_server.url) as ws:
            assert deflate_of(ws) is not None
            await ws.send(text)
            assert await ws.recv() == text
            await ws.send(binary)
            assert await ws.recv() == binary

    run(check())


def test_fragmented_compressed_message(deflate_echo_server):
    parts = ["{\"part\": %d, \"text\": \"%s\"}" % (i, "é" * i) for i in range(40)]

    async def check():
        async with client(deflate_echo_server.url) as ws:
            await ws.send(iter(parts))
            assert await ws.recv() == "".join(parts)

    run(check())


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_server_window_offers(deflate_echo_server, bits):
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=bits, client_max_window_bits=True)
    text = "window " * 5000

    async def check():
        async with client(deflate_echo_server.url, extensions=[factory], compression=None) as ws:
            header = ws.response.headers["Sec-WebSocket-Extensions"]
            assert header.endswith(f"; server_max_window_bits={bits}"), header
            await ws.send(text)
            assert await ws.recv() == text

    run(check())


def test_inflated_size_is_limited(deflate_echo_server):
    # 4 MB of zeros compresses to a few KB; the limit is 2 MB after inflation: 1009.
    async def check():
        async with client(deflate_echo_server.url) as ws:
            await ws.send(b"\0" * (4 << 20))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    run(check())


def test_hub_fan_out_to_compressed_and_plain_subscribers(deflate_hub_server):
    async def check():
        async with client(deflate_hub_server.url) as zipped, \
                client(deflate_hub_server.url, compression=None) as plain, \
                client(deflate_hub_server.url) as publisher:
            assert deflate_of(zipped) is not None and deflate_of(plain) is None
            for ws in (zipped, plain):
                await ws.send(json.dumps({"type": "subscribe", "payload": {"topic": "news"}}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
            sent = []
            for i in range(30):
                data = {"seq": i, "text": "lorem ipsum " * (i * 7)}
                await publisher.send(json.dumps({"type": "publish", "payload": {"topic": "news", "data": data}}))
                sent.append(data)
            for ws in (zipped, plain):
                for want in sent:
                    got = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    assert got == {"type": "message", "payload": {"topic": "news", "data": want}}

    run(check())
