// A small MQTT 3.1.1 client over WebSockets (subprotocol "mqtt"), for the wallboard and
// the desktop: CONNECT with a user name and password, SUBSCRIBE, PUBLISH (QoS 0 and 1,
// both directions), PUBACK, PINGREQ, DISCONNECT. Written for these pages (no library is
// fetched at run time); the packet layouts are those of the MQTT 3.1.1 standard, section 3.
"use strict";

const MQTT_CONNACK_ERRORS = {
  1: "the broker does not speak MQTT 3.1.1",
  2: "client id refused",
  3: "broker unavailable",
  4: "wrong user name or password",
  5: "not authorised",
};

function mqttString(text) {
  const bytes = new TextEncoder().encode(text);
  return [bytes.length >> 8, bytes.length & 0xff, ...bytes];
}

function mqttPacket(first, body) {
  const length = [];
  let n = body.length;
  do {
    let digit = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) digit |= 0x80;
    length.push(digit);
  } while (n > 0);
  return new Uint8Array([first, ...length, ...body]);
}

class MqttClient {
  // url: ws:// or wss://; options: {username, password, clientId, keepalive}
  constructor(url, options) {
    this.url = url;
    this.options = options;
    this.onmessage = () => {}; // (topic, text, retained)
    this.onclose = () => {}; // (reason)
    this._nextId = 1;
    this._acks = new Map(); // packet id -> resolve
    this._buffer = new Uint8Array(0);
    this._socket = null;
    this._ping = null;
  }

  // resolves once the broker accepted the login (CONNACK 0), rejects with the reason
  connect() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url, ["mqtt"]);
      socket.binaryType = "arraybuffer";
      this._socket = socket;
      this._connected = { resolve, reject };
      socket.onopen = () => socket.send(this._connectPacket());
      socket.onmessage = (event) => this._receive(new Uint8Array(event.data));
      socket.onerror = () => {};
      socket.onclose = () => this._closed("connection closed");
    });
  }

  subscribe(filters) {
    const id = this._packetId();
    const body = [id >> 8, id & 0xff];
    for (const filter of filters) body.push(...mqttString(filter), 1);
    this._send(mqttPacket(0x82, body));
  }

  // QoS 1 by default; resolves on PUBACK (MQTT 3.1.1 acknowledges even what an ACL drops)
  publish(topic, text, { qos = 1, retain = false } = {}) {
    const body = mqttString(topic);
    const id = qos > 0 ? this._packetId() : 0;
    if (qos > 0) body.push(id >> 8, id & 0xff);
    body.push(...new TextEncoder().encode(text));
    const done = qos > 0 ? new Promise((resolve) => this._acks.set(id, resolve)) : Promise.resolve();
    this._send(mqttPacket(0x30 | (qos << 1) | (retain ? 1 : 0), body));
    return done;
  }

  close() {
    this._send(new Uint8Array([0xe0, 0x00]));
    if (this._socket) this._socket.close();
  }

  _connectPacket() {
    const o = this.options;
    const keepalive = o.keepalive || 30;
    const flags = 0x02 | (o.username ? 0x80 : 0) | (o.password ? 0x40 : 0); // clean session
    const body = [...mqttString("MQTT"), 4, flags, keepalive >> 8, keepalive & 0xff];
    body.push(...mqttString(o.clientId));
    if (o.username) body.push(...mqttString(o.username));
    if (o.password) body.push(...mqttString(o.password));
    return mqttPacket(0x10, body);
  }

  _packetId() {
    const id = this._nextId;
    this._nextId = id >= 65535 ? 1 : id + 1;
    return id;
  }

  _send(bytes) {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) this._socket.send(bytes);
  }

  _closed(reason) {
    clearInterval(this._ping);
    if (this._connected) {
      this._connected.reject(new Error(reason));
      this._connected = null;
    } else if (this._socket) {
      this.onclose(reason);
    }
    this._socket = null;
  }

  // a WebSocket message may hold several packets, or part of one
  _receive(bytes) {
    const joined = new Uint8Array(this._buffer.length + bytes.length);
    joined.set(this._buffer);
    joined.set(bytes, this._buffer.length);
    let at = 0;
    while (at < joined.length) {
      let length = 0;
      let shift = 1;
      let i = at + 1;
      for (;;) {
        if (i >= joined.length) return this._keep(joined, at);
        const digit = joined[i++];
        length += (digit & 0x7f) * shift;
        shift *= 128;
        if (!(digit & 0x80)) break;
      }
      if (i + length > joined.length) return this._keep(joined, at);
      this._packet(joined[at], joined.subarray(i, i + length));
      at = i + length;
    }
    this._buffer = new Uint8Array(0);
  }

  _keep(joined, at) {
    this._buffer = joined.slice(at);
  }

  _packet(first, body) {
    const type = first >> 4;
    if (type === 2) {
      const code = body[1];
      const waiting = this._connected;
      this._connected = null;
      if (code === 0) {
        const keepalive = (this.options.keepalive || 30) * 1000;
        this._ping = setInterval(() => this._send(new Uint8Array([0xc0, 0x00])), keepalive / 2);
        waiting.resolve();
      } else {
        const socket = this._socket;
        this._socket = null; // the rejection is the one report of this failure, not onclose
        waiting.reject(new Error(MQTT_CONNACK_ERRORS[code] || `refused (${code})`));
        socket.close();
      }
    } else if (type === 3) {
      const qos = (first >> 1) & 3;
      const topicLength = (body[0] << 8) | body[1];
      const topic = new TextDecoder().decode(body.subarray(2, 2 + topicLength));
      let at = 2 + topicLength;
      if (qos > 0) {
        this._send(new Uint8Array([0x40, 0x02, body[at], body[at + 1]]));
        at += 2;
      }
      this.onmessage(topic, new TextDecoder().decode(body.subarray(at)), (first & 1) === 1);
    } else if (type === 4) {
      const id = (body[0] << 8) | body[1];
      const resolve = this._acks.get(id);
      this._acks.delete(id);
      if (resolve) resolve();
    }
  }
}
