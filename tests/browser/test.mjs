// Browser tests: headless Chromium (Debian's) driven by playwright-core, against real wshub
// processes, through a loopback TCP proxy the test controls (to cut connections while the
// server keeps running, and to point the same URL at a restarted server); one test runs a
// private redis-server (history kept in Redis survives a restart); one runs the client's
// token refresh against a server that requires tokens.
//
//   node tests/browser/test.mjs            (tests/browser/run.sh installs what it needs first)
//   WSHUB_BIN=path        the server binary (default target/release/wshub)
//   SCREENSHOT=path.png   also save the demo page's screenshot there
//
// Every wait is bounded; a failure prints what was seen and exits non-zero.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { inflateSync } from "node:zlib";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.WSHUB_BIN || path.join(root, "target/release/wshub");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, check, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

// ----- wshub processes -----

const servers = new Set();

function startServer(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ["--listen", "127.0.0.1:0", ...args], {
      env: { ...process.env, RUST_LOG: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    servers.add(child);
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`wshub did not start: ${seen}`)), 15000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      seen += chunk;
      const m = seen.match(/listening on (\S+)/);
      if (m && !child.port) {
        clearTimeout(timer);
        child.port = Number(m[1].split(":").pop());
        resolve(child);
      }
    });
    child.on("exit", (code) => {
      servers.delete(child);
      if (!child.port) reject(new Error(`wshub exited (${code}): ${seen}`));
    });
  });
}

function stopServer(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.on("exit", () => resolve());
    child.kill("SIGKILL");
  });
}

async function publish(port, topic, data) {
  const r = await fetch(`http://127.0.0.1:${port}/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ topic, data }),
  });
  assert(r.status === 200, `publish answered ${r.status}`);
}

// ----- the proxy -----

/** A loopback TCP proxy: `cut()` resets every connection through it; `target` may change. */
function startProxy(targetPort) {
  const pairs = new Set();
  const proxy = { target: targetPort, port: 0, cuts: 0 };
  const server = net.createServer((client) => {
    const upstream = net.connect(proxy.target, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  proxy.cut = () => {
    proxy.cuts += pairs.size;
    for (const { client, upstream } of pairs) {
      client.resetAndDestroy ? client.resetAndDestroy() : client.destroy();
      upstream.destroy();
    }
    pairs.clear();
  };
  // Stops forwarding on every current connection but keeps it open: a dead peer the client
  // can only notice with its own ping and timeout.
  proxy.freeze = () => {
    for (const pair of pairs) {
      pair.client.unpipe(pair.upstream);
      pair.upstream.unpipe(pair.client);
      pair.client.pause();
      pair.upstream.pause();
      pair.frozen = true;
    }
  };
  proxy.close = () => {
    for (const { client, upstream } of pairs) {
      client.destroy();
      upstream.destroy();
    }
    return new Promise((r) => server.close(r));
  };
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      proxy.port = server.address().port;
      resolve(proxy);
    });
  });
}

// ----- the page side -----

/** Opens a page on `origin`, loads the client from the server and subscribes to `topic`. */
async function clientPage(browser, origin, topic) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${origin}/healthz`);
  await page.evaluate(
    async ({ origin, topic }) => {
      const { WsHub } = await import(`${origin}/wshub.js`);
      const log = (window.log = { states: [], received: [], unrecovered: [], replies: [], errors: [] });
      const hub = new WsHub(origin.replace("http", "ws") + "/ws", {
        minBackoff: 100,
        maxBackoff: 1000,
        pingInterval: 2000,
        pingTimeout: 2000,
      });
      window.hub = hub;
      hub.on("state", (s) => log.states.push(s));
      hub.on("unrecovered", (t, reply) => log.unrecovered.push({ t, reply }));
      hub.on("error", (e) => log.errors.push(e.message));
      log.replies.push(await hub.subscribe(topic, (data, meta) => log.received.push([data, meta.offset])));
    },
    { origin, topic },
  );
  return page;
}

const pageLog = (page) => page.evaluate(() => window.log);

// ----- the tests -----

async function recoveryWithHistory(browser) {
  // Compression on (threshold 1 byte): replayed messages are compressed for this client too.
  const server = await startServer(["--history-size", "1000", "--compression", "--compression-threshold", "1"]);
  const proxy = await startProxy(server.port);
  const page = await clientPage(browser, `http://127.0.0.1:${proxy.port}`, "stream");
  const total = 400;
  for (let i = 1; i <= total; i++) {
    await publish(server.port, "stream", i);
    if (i === 100 || i === 250) {
      // Cut mid-stream and keep publishing while the client is away.
      await waitFor("some messages before the cut", async () => (await pageLog(page)).received.length >= i - 20);
      proxy.cut();
    }
    if (i === 330) {
      // A connection that goes silent without closing: only the client's ping timeout sees it.
      await waitFor("messages before the freeze", async () => (await pageLog(page)).received.length >= i - 20);
      proxy.freeze();
    }
    if (i % 50 === 0) await sleep(20);
  }
  const log = await waitFor("every message", async () => {
    const log = await pageLog(page);
    return log.received.length >= total && log;
  });
  await sleep(300); // anything extra (a duplicate) would arrive now
  const final = await pageLog(page);
  const data = final.received.map(([d]) => d);
  const offsets = final.received.map(([, o]) => o);
  const expected = Array.from({ length: total }, (_, i) => i + 1);
  assert(JSON.stringify(data) === JSON.stringify(expected), `received in order exactly once: got ${data.length} items, first differences ${firstDiff(data, expected)}`);
  assert(JSON.stringify(offsets) === JSON.stringify(expected), "offsets 1..N");
  assert(proxy.cuts >= 2, `the connection was cut twice (${proxy.cuts})`);
  const disconnects = final.states.filter((s) => s === "disconnected").length;
  assert(disconnects >= 2, `the app saw the drops: ${final.states}`);
  assert(final.states[0] === "connected", `first state is the initial connect: ${final.states}`);
  assert(final.unrecovered.length === 0, `recovered every time: ${JSON.stringify(final.unrecovered)}`);
  assert(final.errors.includes("ping timeout"), `the frozen connection was detected by ping: ${final.errors}`);
  const compressed = await page.evaluate(() => window.hub._ws && window.hub._ws.extensions);
  assert(/permessage-deflate/.test(compressed), `compression negotiated: ${compressed}`);
  console.log(`ok: history on (compressed): ${total} messages through ${proxy.cuts} cuts and a silent connection (ping timeout), each exactly once, in order (${log.states.join(" > ")})`);
  await page.close();
  await proxy.close();
  await stopServer(server);
}

function firstDiff(a, b) {
  const i = a.findIndex((x, k) => x !== b[k]);
  return i < 0 ? "none" : `at ${i}: ${a.slice(i, i + 5)} vs ${b.slice(i, i + 5)}`;
}

async function notRecoverable(browser) {
  // History off: a cut cannot be recovered, and the app is told.
  let server = await startServer([]);
  const proxy = await startProxy(server.port);
  let page = await clientPage(browser, `http://127.0.0.1:${proxy.port}`, "t");
  proxy.cut();
  await waitFor("unrecovered (history off)", async () => (await pageLog(page)).unrecovered.length === 1);
  console.log("ok: history off: the app is told it could not recover");
  await page.close();
  await stopServer(server);

  // A restart loses an in-memory history: the new epoch cannot be recovered, and the app is told.
  server = await startServer(["--history-size", "100"]);
  proxy.target = server.port;
  proxy.cut();
  page = await clientPage(browser, `http://127.0.0.1:${proxy.port}`, "t");
  await publish(server.port, "t", "before restart");
  await waitFor("a message", async () => (await pageLog(page)).received.length === 1);
  const oldEpoch = (await pageLog(page)).replies[0].epoch;
  await stopServer(server);
  server = await startServer(["--history-size", "100"]);
  proxy.target = server.port;
  const log = await waitFor("unrecovered (restart)", async () => {
    const log = await pageLog(page);
    return log.unrecovered.length === 1 && log;
  });
  const reply = log.unrecovered[0].reply;
  assert(reply.recovered === false && reply.epoch !== oldEpoch, `new epoch after restart: ${JSON.stringify(reply)}`);
  await publish(server.port, "t", "after restart");
  await waitFor("live after the restart", async () => (await pageLog(page)).received.length === 2);
  console.log("ok: restart: the app is told it could not recover, and live messages flow again");
  await page.close();
  await proxy.close();
  await stopServer(server);
}

// ----- tokens -----

const SECRET = "browser test secret";

/** An HS256 JWT for `claims`, signed with SECRET (node:crypto; no JWT package needed). */
function mint(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signed = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${signed}.${createHmac("sha256", SECRET).update(signed).digest("base64url")}`;
}

async function metric(port, name) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  assert(line, `metric ${name} in /metrics`);
  return Number(line.split(" ")[1]);
}

/**
 * Opens a page whose client connects with a token from the test (`mintToken`, exposed to the
 * page): with `refresh`, through the client's `getToken` (so it refreshes before `exp`);
 * without, as a fixed `token`. Close codes the page's sockets see are logged.
 */
async function tokenPage(browser, port, refresh) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  let minted = 0;
  // The first token expires in 6 s; with refresh, the next ones in 10 minutes.
  const now = () => Math.floor(Date.now() / 1000);
  await page.exposeFunction("mintToken", () => {
    minted += 1;
    const exp = now() + (minted === 1 ? 6 : 600);
    return { token: mint({ sub: "browser", exp, wshub: { subscribe: ["t"] } }), exp };
  });
  const origin = `http://127.0.0.1:${port}`;
  await page.goto(`${origin}/healthz`);
  const first = await page.evaluate(
    async ({ origin, refresh }) => {
      const { WsHub } = await import(`${origin}/wshub.js`);
      const log = (window.log = { states: [], received: [], closes: [], refreshed: [], minted: [], errors: [] });
      const getToken = async () => {
        const { token, exp } = await window.mintToken();
        log.minted.push(exp);
        return token;
      };
      // The socket class the client uses, noting each close code.
      class Logged extends WebSocket {
        constructor(url) {
          super(url);
          this.addEventListener("close", (e) => log.closes.push(e.code));
        }
      }
      const options = { WebSocket: Logged, minBackoff: 500, maxBackoff: 1000, refreshBefore: 4000 };
      if (refresh) options.getToken = getToken;
      else options.token = await getToken();
      const hub = (window.hub = new WsHub(origin.replace("http", "ws") + "/ws", options));
      hub.on("state", (s) => log.states.push(s));
      hub.on("refreshed", (p) => log.refreshed.push(p.exp));
      hub.on("error", (e) => log.errors.push(e.message));
      await hub.subscribe("t", (data) => log.received.push(data));
      return log.minted[0];
    },
    { origin, refresh },
  );
  return { page, exp: first };
}

async function tokenRefresh(browser) {
  const server = await startServer(["--jwt-secret", SECRET, "--jwt-leeway", "0"]);
  const refreshing = await tokenPage(browser, server.port, true);
  const fixed = await tokenPage(browser, server.port, false);
  // Without refresh, the server closes the connection with 4001 at the token's exp.
  const fixedLog = await waitFor(
    "the fixed token's connection closed with 4001",
    async () => {
      const log = await pageLog(fixed.page);
      return log.closes.includes(4001) && log;
    },
    30000,
  );
  assert(Date.now() / 1000 >= fixed.exp - 1, `closed at exp (${fixed.exp}), not before`);
  assert(fixedLog.states.includes("disconnected"), `the app saw the drop: ${fixedLog.states}`);
  // With refresh, the client sent a new token before exp: the server answered `refreshed`
  // with the new exp, and the connection outlives the first token.
  await waitFor("the first token's exp to pass", async () => Date.now() / 1000 > refreshing.exp + 1, 30000);
  await publish(server.port, "t", "after the first exp");
  const log = await waitFor("a message after the first exp", async () => {
    const log = await pageLog(refreshing.page);
    return log.received.length === 1 && log;
  });
  assert(log.minted.length === 2, `one token to connect, one to refresh: ${log.minted}`);
  assert(JSON.stringify(log.refreshed) === JSON.stringify([log.minted[1]]), `refreshed with the new exp: ${log.refreshed} vs ${log.minted}`);
  assert(log.closes.length === 0, `never closed: ${log.closes}`);
  assert(JSON.stringify(log.states) === JSON.stringify(["connected"]), `one connection throughout: ${log.states}`);
  assert((await metric(server.port, "wshub_token_refreshes_total")) === 1, "one refresh accepted");
  assert((await metric(server.port, "wshub_close_frames_sent_total{code=\"4001\"}")) === 1, "one 4001: the fixed token's");
  console.log(`ok: tokens: the client refreshed before exp and kept its connection; without refresh it was closed with 4001`);
  await refreshing.page.close();
  await fixed.page.close();
  await stopServer(server);
}

/** A private redis-server on a free loopback port (run-all.sh installs it); stopped with the servers. */
async function startRedis() {
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, "127.0.0.1", () => {
      const port = probe.address().port;
      probe.close(() => resolve(port));
    });
  });
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  servers.add(child);
  child.on("exit", () => servers.delete(child));
  await waitFor("redis-server listening", () =>
    new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    }),
  );
  child.url = `redis://127.0.0.1:${port}`;
  return child;
}

async function backplaneUp(port) {
  await waitFor("the backplane up", async () => {
    const r = await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null);
    return r && r.status === 200;
  });
}

async function restartWithHistoryInRedis(browser) {
  // History kept in Redis: a server restart (a deploy) loses nothing, and the client recovers.
  const redis = await startRedis();
  const args = ["--redis", redis.url, "--history-size", "100"];
  let server = await startServer(args);
  await backplaneUp(server.port);
  const proxy = await startProxy(server.port);
  const page = await clientPage(browser, `http://127.0.0.1:${proxy.port}`, "deploy");
  for (let i = 1; i <= 3; i++) await publish(server.port, "deploy", i);
  await waitFor("three messages", async () => (await pageLog(page)).received.length === 3);
  await stopServer(server);
  // The new process takes messages before the client is back (the proxy still points at the
  // dead port), so they can only reach the client through recovery.
  server = await startServer(args);
  await backplaneUp(server.port);
  for (let i = 4; i <= 6; i++) await publish(server.port, "deploy", i);
  proxy.target = server.port;
  await waitFor("six messages", async () => (await pageLog(page)).received.length >= 6);
  await publish(server.port, "deploy", 7);
  const log = await waitFor("the live one", async () => {
    const log = await pageLog(page);
    return log.received.length >= 7 && log;
  });
  await sleep(300); // a duplicate would arrive now
  const final = await pageLog(page);
  const expected = [1, 2, 3, 4, 5, 6, 7].map((i) => [i, i]);
  assert(JSON.stringify(final.received) === JSON.stringify(expected), `every message once, in order: ${JSON.stringify(final.received)}`);
  assert(final.unrecovered.length === 0, `recovered across the restart: ${JSON.stringify(final.unrecovered)}`);
  console.log(`ok: history in Redis: a server restart loses nothing (${log.states.join(" > ")})`);
  await page.close();
  await proxy.close();
  await stopServer(server);
  await stopServer(redis);
}

async function demoPage(browser) {
  const server = await startServer(["--demo", "--history-size", "100"]);
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${server.port}/`);
  await waitFor("connected", async () => (await page.textContent("#state")) === "connected");
  for (const text of ["hello from the browser test", "recovery is exact"]) {
    await page.fill("#text", text);
    await page.click("button[type=submit]");
  }
  await waitFor("chat messages shown", async () => (await page.locator("#messages li .text").count()) === 2);
  const first = Number(await waitFor("counter", async () => Number(await page.textContent("#counter")) >= 1 && (await page.textContent("#counter"))));
  await waitFor("counter advancing", async () => Number(await page.textContent("#counter")) >= first + 2, 10000);
  // A drop from the page's own button: the chat and counter keep working.
  await page.click("#drop");
  await waitFor("reconnected", async () => (await page.locator("#log li").allTextContents()).some((t) => t.includes("disconnected")));
  await waitFor("connected again", async () => (await page.textContent("#state")) === "connected");
  assert(errors.length === 0, `no page errors: ${errors}`);
  const png = await page.screenshot();
  assert(!isBlank(png), "the screenshot is not blank");
  if (process.env.SCREENSHOT) writeFileSync(process.env.SCREENSHOT, png);
  console.log(`ok: demo page: chat, counter (${await page.textContent("#counter")}), reconnect; screenshot ${png.length} bytes, not blank`);
  await page.close();
  await stopServer(server);
}

/** Whether a PNG is (nearly) one colour: inflates its pixel data and counts distinct bytes. */
function isBlank(png) {
  const chunks = [];
  for (let at = 8; at < png.length; ) {
    const len = png.readUInt32BE(at);
    const type = png.toString("latin1", at + 4, at + 8);
    if (type === "IDAT") chunks.push(png.subarray(at + 8, at + 8 + len));
    at += 12 + len;
  }
  const pixels = inflateSync(Buffer.concat(chunks));
  const seen = new Set(pixels);
  return seen.size < 32;
}

// ----- main -----

const profile = mkdtempSync(path.join(os.tmpdir(), "wshub-chromium-"));
let browser;
let failed = false;
const watchdog = setTimeout(() => {
  console.error("browser tests: overall timeout");
  cleanup().then(() => process.exit(1));
}, 240000);

async function cleanup() {
  for (const child of servers) child.kill("SIGKILL");
  if (browser) await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

try {
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  await recoveryWithHistory(browser);
  await notRecoverable(browser);
  await restartWithHistoryInRedis(browser);
  await tokenRefresh(browser);
  await demoPage(browser);
} catch (e) {
  failed = true;
  console.error("FAILED:", e.stack || e);
} finally {
  clearTimeout(watchdog);
  await cleanup();
}
process.exit(failed ? 1 : 0);
