"""Start target/release/wshub (or $WSHUB_BIN) on a free loopback port for each test module;
and what every test module's conversations share (`run`, `client`)."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]

# Bound for each test's whole conversation, so a server that stops answering fails the test
# instead of hanging the run.
TEST_TIMEOUT = 30


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT))


def client(url, **kwargs):
    """A `websockets` client for tests; `kwargs` add to or override these options."""
    # proxy=None: never route loopback traffic through a proxy from the environment.
    # ping_interval=None: keepalive pings would interleave with what the tests check.
    # max_size=None: the client must not be the side that limits message size.
    options = dict(proxy=None, ping_interval=None, max_size=None, open_timeout=10, close_timeout=10)
    options.update(kwargs)
    return connect(url, **options)


def wshub_binary() -> Path:
    if os.environ.get("WSHUB_BIN"):
        return Path(os.environ["WSHUB_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "release" / "wshub"


def free_port() -> int:
    # The kernel picks the port; wshub binds it a moment later, which is fine on a quiet machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"ws://127.0.0.1:{port}/ws"


@contextlib.contextmanager
def run_wshub(tmp_path: Path, *args: str):
    binary = wshub_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} does not exist: build it with `cargo build --release`")
    port = free_port()
    log = tmp_path / f"wshub-{port}.log"
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--listen", f"127.0.0.1:{port}", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"wshub exited with {proc.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"wshub did not accept on {port} within 10 s")
                time.sleep(0.05)
        yield Server(proc, port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    with run_wshub(tmp_path_factory.mktemp("echo"), "--echo") as server:
        yield server


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory):
    # A limit small enough to cross cheaply; the echo tests keep the default (1 MiB).
    with run_wshub(tmp_path_factory.mktemp("limit"), "--echo", "--max-message-size", "1000") as server:
        yield server


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    with run_wshub(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture(scope="module")
def deflate_echo_server(tmp_path_factory):
    # --compression-threshold 0: every message goes out compressed when that pays.
    with run_wshub(tmp_path_factory.mktemp("deflate-echo"), "--echo", "--compression",
                   "--compression-threshold", "0", "--max-message-size", "2000000") as server:
        yield server


@pytest.fixture(scope="module")
def deflate_hub_server(tmp_path_factory):
    with run_wshub(tmp_path_factory.mktemp("deflate-hub"), "--compression") as server:
        yield server
