"""`wshub --echo` against the `websockets` client: framing, control frames, close codes, limits."""

import asyncio
import os

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import client, run

async def expect_close(ws, code):
    """Reads until the server closes; returns the close frame it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.recv()
    assert info.value.rcvd is not None, "server dropped the connection without a close frame"
    assert info.value.rcvd.code == code, f"close code {info.value.rcvd.code}, wanted {code}"
    return info.value.rcvd


SIZES = [0, 125, 126, 65535, 65536, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_text_echo(echo_server, size):
    # Multi-byte characters, so a message that got split or re-encoded anywhere shows up.
    pattern = "wshub κόσμε 🚀 "
    message = (pattern * (size // len(pattern.encode()) + 1)).encode()[:size]
    # Cutting at a byte count may split a character: drop the partial one and pad with ASCII,
    # so the frame is exactly `size` bytes and lands on the length-encoding boundaries.
    message = message.decode("utf-8", errors="ignore")
    message += "." * (size - len(message.encode()))
    assert len(message.encode()) == size

    async def check():
        async with client(echo_server.url) as ws:
            await ws.send(message)
            assert await ws.recv() == message

    run(check())


@pytest.mark.parametrize("size", SIZES)
def test_binary_echo(echo_server, size):
    message = os.urandom(size)

    async def check():
        async with client(echo_server.url) as ws:
            await ws.send(message)
            assert await ws.recv() == message

    run(check())


def test_fragmented_text_comes_back_whole(echo_server):
    async def check():
        async with client(echo_server.url) as ws:
            await ws.send(["frag", "mented ", "", "mess", "age"])
            assert await ws.recv() == "fragmented message"

    run(check())


def test_fragmented_text_split_inside_a_character(echo_server):
    # UTF-8 validity is a property of the whole message, not of each fragment: "κ" is CE BA.
    async def check():
        async with client(echo_server.url) as ws:
            await ws.send([b"a\xce", b"\xbab"], text=True)
            assert await ws.recv() == "aκb"

    run(check())


def test_fragmented_binary_comes_back_whole(echo_server):
    parts = [os.urandom(n) for n in (1, 0, 1000, 70000)]

    async def check():
        async with client(echo_server.url) as ws:
            await ws.send(parts)
            assert await ws.recv() == b"".join(parts)

    run(check())


def test_many_messages_in_order(echo_server):
    async def check():
        async with client(echo_server.url) as ws:
            for i in range(200):
                await ws.send(f"message {i}")
            for i in range(200):
                assert await ws.recv() == f"message {i}"

    run(check())


def test_ping_gets_pong(echo_server):
    async def check():
        async with client(echo_server.url) as ws:
            pong = await ws.ping(b"are you there")
            # The waiter resolves only on a pong carrying the same payload.
            await asyncio.wait_for(pong, 5)
            # And the connection still carries data afterwards.
            await ws.send("after ping")
            assert await ws.recv() == "after ping"

    run(check())


def test_close_1000_with_reason_is_answered_with_1000(echo_server):
    async def check():
        async with client(echo_server.url) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.close(1000, "done here")
            assert ws.protocol.close_rcvd is not None, "no close frame came back"
            assert ws.close_code == 1000

    run(check())


def test_message_over_limit_gets_1009(small_limit_server):
    async def check():
        async with client(small_limit_server.url) as ws:
            # Exactly at the limit is allowed...
            await ws.send(b"x" * 1000)
            assert await ws.recv() == b"x" * 1000
            # ...one byte more is not.
            await ws.send(b"x" * 1001)
            await expect_close(ws, 1009)

    run(check())


def test_fragmented_message_over_limit_gets_1009(small_limit_server):
    # The limit applies to the reassembled message, not to each frame.
    async def check():
        async with client(small_limit_server.url) as ws:
            await ws.send([b"x" * 600, b"x" * 600])
            await expect_close(ws, 1009)

    run(check())


def test_invalid_utf8_text_gets_1007(echo_server):
    # text=True sends the bytes as a Text frame as they are: websockets leaves validity to the
    # caller, which is exactly the lever this check needs.
    async def check():
        async with client(echo_server.url) as ws:
            await ws.send(b"valid then \xff\xfe", text=True)
            await expect_close(ws, 1007)

    run(check())


def test_server_declines_or_handles_compression_offer(echo_server):
    # The default client offers permessage-deflate; whatever the server answers, echo must work.
    async def check():
        async with client(echo_server.url, compression="deflate") as ws:
            message = "compressible " * 1000
            await ws.send(message)
            assert await ws.recv() == message

    run(check())
