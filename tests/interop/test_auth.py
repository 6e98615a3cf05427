"""Connection tokens minted by PyJWT, used by the `websockets` client: HS256, RS256, ES256 and
EdDSA keys made here with `cryptography`; refusals, permissions, refresh and expiry."""

import asyncio
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import client, run, run_wshub

SECRET = "interop secret, 32 bytes or longer!"
REPLY_TIMEOUT = 5


def mint(claims=None, key=SECRET, alg="HS256", **overrides):
    body = {"sub": "py", "exp": int(time.time()) + 600,
            "wshub": {"subscribe": ["news.*", "user.{sub}"], "publish": ["chat"]}}
    body.update(claims or {})
    body.update(overrides)
    return jwt.encode(body, key, algorithm=alg)


async def send(ws, obj):
    await ws.send(json.dumps(obj))


async def receive(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory):
    with run_wshub(tmp_path_factory.mktemp("jwt"), "--jwt-secret", SECRET) as server:
        yield server


def public_pem(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("alg,make_key", [
    ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("EdDSA", ed25519.Ed25519PrivateKey.generate),
])
def test_public_key_tokens(tmp_path, alg, make_key):
    key = make_key()
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(key))
    with run_wshub(tmp_path, "--jwt-public-key", str(pem)) as server:
        async def check():
            token = mint(key=key, alg=alg)
            async with client(f"{server.url}?token={token}") as ws:
                await send(ws, {"type": "subscribe", "payload": {"topic": "user.py"}, "id": 1})
                assert await receive(ws) == {"type": "subscribed", "payload": {"topic": "user.py"}, "id": 1}
            # A token signed by another key of the same kind is refused.
            other = mint(key=make_key(), alg=alg)
            with pytest.raises(InvalidStatus) as refused:
                async with client(f"{server.url}?token={other}"):
                    pass
            assert refused.value.response.status_code == 401
        run(check())


def test_hs256_in_query_and_header(jwt_server):
    async def check():
        async with client(f"{jwt_server.url}?token={mint()}") as ws:
            await send(ws, {"type": "ping", "id": 1})
            assert await receive(ws) == {"type": "pong", "id": 1}
        headers = {"Authorization": f"Bearer {mint()}"}
        async with client(jwt_server.url, additional_headers=headers) as ws:
            await send(ws, {"type": "ping", "id": 2})
            assert await receive(ws) == {"type": "pong", "id": 2}
    run(check())


@pytest.mark.parametrize("token,reason", [
    (None, "missing token"),
    ("garbage", "malformed token"),
    (lambda: mint(key="not the secret, though just as long"), "bad token signature"),
    (lambda: mint(exp=int(time.time()) - 120), "token expired"),
    (lambda: mint(nbf=int(time.time()) + 600), "token not yet valid"),
    (lambda: jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"),
     "token algorithm not allowed"),
])
def test_refusals_are_401(jwt_server, token, reason):
    if callable(token):
        token = token()
    url = jwt_server.url if token is None else f"{jwt_server.url}?token={token}"

    async def check():
        with pytest.raises(InvalidStatus) as refused:
            async with client(url):
                pass
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.body.decode().strip() == reason
    run(check())


def test_permissions_refresh_and_expiry(jwt_server):
    async def check():
        async with client(f"{jwt_server.url}?token={mint()}") as ws:
            await send(ws, {"type": "publish", "payload": {"topic": "news.x", "data": 1}, "id": 1})
            assert await receive(ws) == {"type": "error", "payload": {"message": "Permission denied"}, "id": 1}
            await send(ws, {"type": "subscribe", "payload": {"topic": "news.x"}, "id": 2})
            assert (await receive(ws))["type"] == "subscribed"
            # Refresh with a token that no longer grants news.*.
            exp = int(time.time()) + 900
            fresh = mint({"wshub": {"subscribe": ["user.{sub}"]}}, exp=exp)
            await send(ws, {"type": "refresh", "payload": {"token": fresh}, "id": 3})
            assert await receive(ws) == {"type": "unsubscribed", "payload": {"topic": "news.x"}}
            assert await receive(ws) == {"type": "refreshed", "payload": {"exp": exp}, "id": 3}
        # A token already past exp (inside the connect leeway) is closed with 4001 at once.
        async with client(f"{jwt_server.url}?token={mint(exp=int(time.time()) - 5)}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
            assert closed.value.rcvd.code == 4001
            assert closed.value.rcvd.reason == "token expired"
    run(check())
