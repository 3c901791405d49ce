// MQTT.js across two nodes of a Tern cluster: a subscriber connects to the
// first URL, a publisher to the second (e.g. ws://127.0.0.1:PORT1/mqtt and
// mqtt://127.0.0.1:PORT2), protocol version 4 or 5 as the third argument.
// The subscriber subscribes to TOPIC/#; the publisher sends QoS 0 probes to
// TOPIC/probe until one arrives (a SUBACK on one node does not wait for the
// other nodes to route to it), then "one" at QoS 1 and "two" at QoS 2 to
// TOPIC/data. Exits 0 once both arrived with their QoS; any error, or
// nothing within the deadline, exits 1 with the reason on stderr.
"use strict";

const mqtt = require("mqtt");

const [subUrl, pubUrl] = process.argv.slice(2, 4);
const protocolVersion = Number(process.argv[4] || 5);
if (!subUrl || !pubUrl) {
  console.error("usage: node cluster_roundtrip.js SUB_URL PUB_URL [4|5]");
  process.exit(2);
}

const base = `interop/mqttjs-cluster/${process.pid}/${Date.now()}`;
const expected = new Map([
  ["one", 1],
  ["two", 2],
]);
const deadline = setTimeout(
  () => fail(`not done within 15 s; still expecting ${[...expected.keys()]}`),
  15000,
);
let done = false;

function fail(reason) {
  console.error(`cluster_roundtrip: ${reason}`);
  process.exit(1);
}

function connect(url, role) {
  const client = mqtt.connect(url, {
    protocolVersion,
    clientId: `mqttjs-${role}-${process.pid}`,
    reconnectPeriod: 0,
    connectTimeout: 5000,
  });
  client.on("error", (err) => fail(`${role} (${url}): ${err.message}`));
  client.on("close", () => {
    if (!done) fail(`${role} (${url}): connection closed`);
  });
  return new Promise((resolve) => client.on("connect", () => resolve(client)));
}

async function main() {
  const sub = await connect(subUrl, "sub");
  const pub = await connect(pubUrl, "pub");
  let routed = false;
  let probes;
  sub.on("message", (topic, message, packet) => {
    if (topic === `${base}/probe`) {
      if (!routed) {
        routed = true;
        clearInterval(probes);
        pub.publish(`${base}/data`, "one", { qos: 1 }, (err) => err && fail(`publish one: ${err.message}`));
        pub.publish(`${base}/data`, "two", { qos: 2 }, (err) => err && fail(`publish two: ${err.message}`));
      }
      return;
    }
    const text = message.toString();
    if (topic !== `${base}/data` || !expected.has(text)) {
      return fail(`unexpected message on ${topic}: ${text}`);
    }
    if (packet.qos !== expected.get(text)) {
      return fail(`${text} arrived at QoS ${packet.qos}, expected ${expected.get(text)}`);
    }
    expected.delete(text);
    if (expected.size === 0) {
      done = true;
      clearTimeout(deadline);
      sub.end(false, () =>
        pub.end(false, () => {
          console.log(`cluster_roundtrip: ok (MQTT ${protocolVersion}, ${subUrl} <- ${pubUrl})`);
          process.exit(0);
        }),
      );
    }
  });
  sub.subscribe(`${base}/#`, { qos: 2 }, (err, granted) => {
    if (err) return fail(`subscribe: ${err.message}`);
    if (!granted || granted[0].qos !== 2) {
      return fail(`subscription refused: ${JSON.stringify(granted)}`);
    }
    const probe = () => pub.publish(`${base}/probe`, "probe", { qos: 0 });
    probe();
    probes = setInterval(probe, 50);
  });
}

main().catch((err) => fail(err.stack || String(err)));
