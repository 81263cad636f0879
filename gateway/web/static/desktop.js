// The agent desktop: presence commands, a confirmed location, and the lock-down banner
// while an emergency call is up (SPEC E-8). It shows what the gateway publishes, not what
// it asked for (docs/mqtt.md), and publishes only to its own agent's command topics.
"use strict";

const desk = { client: null, agent: "", prefix: "", lockdown: null, nodes: new Map(), request: 0 };

function topic(kind) {
  return `${desk.prefix}/agents/${desk.agent}/${kind}`;
}

function showPresence(p) {
  const shown = document.getElementById("presence");
  shown.textContent = p ? p.status : "unknown";
  shown.dataset.status = p ? p.status : "";
  shown.dataset.timestamp = p ? p.timestamp : "";
  for (const button of document.querySelectorAll("#presence-form button")) {
    button.setAttribute("aria-pressed", p && button.value === p.status ? "true" : "false");
  }
}

function showLocation(l) {
  document.getElementById("location-now").textContent = l
    ? `${formatLocation(l.location)} (${l.source}${l.confirmed_at ? `, confirmed ${l.confirmed_at}` : ""})`
    : "unknown";
  const warning = document.getElementById("location-warning");
  warning.hidden = !(l && l.warning);
  warning.textContent = l && l.warning ? `⚠ ${l.warning}` : "";
}

function showLockdown() {
  const active = Boolean(desk.lockdown && desk.lockdown.active);
  document.getElementById("lockdown").hidden = !active;
  const controls = document.getElementById("controls");
  controls.hidden = active; // only "end call" is left (E-8)
  for (const fieldset of controls.querySelectorAll("fieldset")) fieldset.disabled = active;
  if (active) {
    const l = desk.lockdown;
    const kind = l.reason === "emergency_callback" ? "EMERGENCY CALLBACK" : "EMERGENCY CALL";
    const shown = document.getElementById("lockdown-kind");
    const text = `${l.test ? "TEST " : ""}${kind}`;
    if (shown.textContent !== text) shown.textContent = text; // an alert: change it only once
    document.getElementById("lockdown-elapsed").textContent = since(l.since);
  }
}

function showNodes() {
  document.getElementById("nodes").replaceChildren(
    ...[...desk.nodes.entries()].map(([node, s]) =>
      el("li", {}, el("strong", { text: node }), " ", el("span", { class: `node ${s.status}`, text: s.status })),
    ),
  );
}

function onMessage(name, payload) {
  if (name === topic("presence")) showPresence(payload);
  else if (name === topic("location")) showLocation(payload);
  else if (name === topic("lockdown")) {
    desk.lockdown = payload;
    showLockdown();
  } else if (name === topic("location/ack") && payload) {
    document.getElementById("location-ack").textContent = payload.accepted
      ? "The gateway stored your location."
      : `Refused: ${payload.reason}`;
  } else if (name.startsWith(`${desk.prefix}/nodes/`)) {
    const node = name.split("/").slice(-2)[0];
    payload ? desk.nodes.set(node, payload) : desk.nodes.delete(node);
    showNodes();
  }
}

function setPresence(status, note) {
  const command = { version: 1, status };
  if (note) command.reason = note;
  return desk.client.publish(topic("presence/set"), JSON.stringify(command));
}

function sendLocation(location) {
  desk.request += 1;
  const command = { version: 1, id: `desk-${desk.request}`, location };
  document.getElementById("location-ack").textContent = "Sent; waiting for the gateway…";
  return desk.client.publish(topic("location/set"), JSON.stringify(command));
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("presence-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (desk.client) setPresence(event.submitter.value, event.target.elements.note.value.trim());
  });
  document.getElementById("location-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const location = {};
    for (const input of event.target.querySelectorAll("input")) {
      if (input.value.trim()) location[input.name] = input.value.trim();
    }
    if (desk.client) sendLocation(location);
  });
  document.getElementById("location-withdraw").addEventListener("click", () => {
    if (desk.client) sendLocation(null);
  });
  signIn({
    role: "desktop",
    filters: (config) => {
      desk.agent = config.agent;
      desk.prefix = config.prefix;
      return [`${topic("+")}`, topic("location/ack"), `${config.prefix}/nodes/+/status`];
    },
    onmessage: onMessage,
    onconnect: (client) => {
      desk.client = client;
    },
  });
  setInterval(showLockdown, 1000);
});
