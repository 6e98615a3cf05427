"""wss:// and https:// with independent clients: Python `websockets` over an `ssl` context that
trusts only the test CA (certificate checked, hostname checked), and `curl --cacert` for
/healthz. The CA and certificate come from tests/gencert.sh, made fresh for this module."""

import asyncio
import json
import shutil
import ssl
import subprocess

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import ROOT, run, run_wshub

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    subprocess.run([str(ROOT / "tests" / "gencert.sh"), str(certs)], check=True)
    with run_wshub(
        tmp_path_factory.mktemp("tls"),
        "--tls-cert", str(certs / "cert.pem"), "--tls-key", str(certs / "key.pem"),
    ) as server:
        server.url = f"wss://localhost:{server.port}/ws"
        server.https = f"https://localhost:{server.port}"
        server.ca = certs / "ca.pem"
        yield server


def context(ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def client(server, **kwargs):
    options = dict(proxy=None, ping_interval=None, open_timeout=10, close_timeout=10, ssl=context(server.ca))
    options.update(kwargs)
    return connect(server.url, **options)


def test_subscribe_publish_over_wss(tls_server):
    async def main():
        async with client(tls_server) as sub, client(tls_server) as pub:
            await sub.send(json.dumps({"type": "subscribe", "payload": {"topic": "t"}, "id": 1}))
            assert json.loads(await sub.recv()) == {"type": "subscribed", "payload": {"topic": "t"}, "id": 1}
            await pub.send(json.dumps({"type": "publish", "payload": {"topic": "t", "data": [1, 2]}, "id": 2}))
            assert json.loads(await pub.recv())["payload"]["delivered"] == 1
            assert json.loads(await sub.recv()) == {"type": "message", "payload": {"topic": "t", "data": [1, 2]}}
    run(main())


def test_tls_version_and_alpn(tls_server):
    async def main():
        async with client(tls_server) as ws:
            ssl_object = ws.transport.get_extra_info("ssl_object")
            assert ssl_object.version() in ("TLSv1.3", "TLSv1.2")
            assert ssl_object.selected_alpn_protocol() in (None, "http/1.1")
    run(main())


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_server):
    async def main():
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(tls_server.url, proxy=None, open_timeout=10, ssl=ssl.create_default_context()):
                pass
    run(main())


def test_close_handshake_over_wss(tls_server):
    async def main():
        async with client(tls_server) as ws:
            await ws.send("not json")
            reply = json.loads(await ws.recv())
            assert reply["type"] == "error"
            await ws.close(4000, "done")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 4000
    run(main())


def test_curl_healthz_over_https(tls_server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (tests/interop/run.sh installs it)")
    out = subprocess.run(
        [curl, "-sS", "--max-time", "10", "--cacert", str(tls_server.ca), f"{tls_server.https}/healthz"],
        check=True, capture_output=True, text=True,
    )
    assert json.loads(out.stdout)["status"] == "ok"
    # The same port refuses plain HTTP.
    plain = subprocess.run(
        [curl, "-sS", "--max-time", "10", f"http://localhost:{tls_server.port}/healthz"],
        capture_output=True, text=True,
    )
    assert plain.returncode != 0 or '"ok"' not in plain.stdout
