// MQTT.js over WebSocket: connect to the URL given as the first argument
// (e.g. ws://127.0.0.1:PORT/mqtt), subscribe, publish to the same topic,
// and exit 0 once the message comes back. Any error, or nothing within the
// deadline, exits 1 with the reason on stderr.
"use strict";

const mqtt = require("mqtt");

const url = process.argv[2];
const protocolVersion = Number(process.argv[3] || 5);
if (!url) {
  console.error("usage: node ws_roundtrip.js ws://HOST:PORT/PATH [4|5]");
  process.exit(2);
}

const topic = `interop/mqttjs/${process.pid}/${Date.now()}`;
const payload = "hello over websocket";
const deadline = setTimeout(() => fail("no round trip within 10 s"), 10000);

function fail(reason) {
  console.error(`ws_roundtrip: ${reason}`);
  process.exit(1);
}

const client = mqtt.connect(url, {
  protocolVersion,
  clientId: `mqttjs-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});

client.on("error", (err) => fail(`client error: ${err.message}`));
client.on("close", () => {
  if (!client.done) fail("connection closed before the round trip");
});
client.on("connect", () => {
  client.subscribe(topic, { qos: 1 }, (err, granted) => {
    if (err) return fail(`subscribe: ${err.message}`);
    if (!granted || granted[0].qos !== 1) {
      return fail(`subscription refused: ${JSON.stringify(granted)}`);
    }
    client.publish(topic, payload, { qos: 1 }, (err) => {
      if (err) fail(`publish: ${err.message}`);
    });
  });
});
client.on("message", (t, message) => {
  if (t !== topic || message.toString() !== payload) {
    return fail(`unexpected message on ${t}: ${message.toString()}`);
  }
  client.done = true;
  clearTimeout(deadline);
  client.end(false, () => {
    console.log(`ws_roundtrip: ok (MQTT ${protocolVersion})`);
    process.exit(0);
  });
});
