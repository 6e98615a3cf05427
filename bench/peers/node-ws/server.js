// Echo peer: the `ws` package, every message sent back as it came (text or binary).
'use strict';
const { WebSocketServer } = require('ws');

const [host, port] = (process.argv[2] || '127.0.0.1:9005').split(':');
const wss = new WebSocketServer({ host, port: Number(port), path: '/ws', perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.log(`node ws echo listening on ${host}:${port}`));
