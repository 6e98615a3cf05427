"""wshub in hub mode (no --echo) against the `websockets` client: the JSON pub/sub protocol."""

import asyncio
import json

from conftest import client, run

# How long to wait for one expected reply.
REPLY_TIMEOUT = 5


async def send(ws, obj):
    await ws.send(json.dumps(obj))


async def receive(ws):
    raw = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
    assert isinstance(raw, str), f"hub replies are text frames, got {raw!r}"
    return json.loads(raw)


async def receive_type(ws, kind):
    """The next reply of type `kind`; any other reply before it fails the test."""
    reply = await receive(ws)
    assert reply.get("type") == kind, f"wanted a {kind!r} reply, got {reply}"
    return reply


def test_ping_pong(hub_server):
    async def check():
        async with client(hub_server.url) as ws:
            await send(ws, {"type": "ping", "id": 1})
            reply = await receive_type(ws, "pong")
            assert reply["id"] == 1

    run(check())


def test_subscribe_publish_ack(hub_server):
    async def check():
        async with client(hub_server.url) as subscriber, client(hub_server.url) as publisher:
            await send(subscriber, {"type": "subscribe", "payload": {"topic": "t"}})
            subscribed = await receive_type(subscriber, "subscribed")
            assert subscribed.get("payload", {}).get("topic") == "t", subscribed

            await send(publisher, {"type": "publish", "payload": {"topic": "t", "data": {"x": 1}}, "id": 7})

            message = await receive_type(subscriber, "message")
            assert message["payload"]["topic"] == "t", message
            assert message["payload"]["data"] == {"x": 1}, message

            ack = await receive_type(publisher, "ack")
            assert ack["id"] == 7, ack

    run(check())


def test_publisher_not_subscribed_gets_only_the_ack(hub_server):
    # Publishing does not subscribe: the publisher's next frame after the ack is its own pong.
    async def check():
        async with client(hub_server.url) as publisher:
            await send(publisher, {"type": "publish", "payload": {"topic": "solo", "data": 1}, "id": "p"})
            ack = await receive_type(publisher, "ack")
            assert ack["id"] == "p", ack
            await send(publisher, {"type": "ping", "id": 2})
            assert (await receive_type(publisher, "pong"))["id"] == 2

    run(check())


def test_bad_json_gets_error(hub_server):
    async def check():
        async with client(hub_server.url) as ws:
            await ws.send("{this is not json")
            error = await receive_type(ws, "error")
            assert error["payload"]["message"] == "Invalid message format", error
            # The connection survives a bad message.
            await send(ws, {"type": "ping", "id": 3})
            assert (await receive_type(ws, "pong"))["id"] == 3

    run(check())
