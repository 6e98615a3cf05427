// Echo peer: the `ws` package, every message sent back as it came (text or binary).
// PEER_DEFLATE=1 turns on permessage-deflate with ws's defaults (context takeover both ways,
// zlib's default level), except the threshold: 128 bytes, wshub's default, instead of 1024.
'use strict';
const { WebSocketServer } = require('ws');

const [host, port] = (process.argv[2] || '127.0.0.1:9005').split(':');
const perMessageDeflate = process.env.PEER_DEFLATE === '1' ? { threshold: 128 } : false;
const wss = new WebSocketServer({ host, port: Number(port), path: '/ws', perMessageDeflate });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.log(`node ws echo listening on ${host}:${port}, deflate ${!!perMessageDeflate}`));
