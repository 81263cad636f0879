// The supervisor wallboard: every agent's presence, emergency calls in progress as alerts,
// callback reservations, node status. Read-only: it never publishes (its broker login
// may not). Live from the retained topics and the emergency events (docs/mqtt.md).
"use strict";

const board = {
  prefix: "",
  agents: new Map(), // agent -> presence payload
  locations: new Map(), // agent -> location payload
  calls: new Map(), // call id -> what the events said, and when this page first showed it
  reservations: new Map(), // DID -> {agent, expires}
  nodes: new Map(), // node -> status payload
  trunks: new Map(), // node/trunk/gateway -> trunk gateway payload (docs/mqtt.md)
};

const ENDS = new Set(["ended", "failed"]);

// a new call is announced once (role=alert); the alerts themselves are redrawn every
// second for the elapsed time, so they are not a live region
function call(id) {
  if (!board.calls.has(id)) {
    board.calls.set(id, { call: id, state: "dialled" });
    setTimeout(() => announce(board.calls.get(id)), 0); // once the message's fields are in
  }
  return board.calls.get(id);
}

function announce(known) {
  if (!known) return;
  const kind = known.callback ? "emergency callback" : "emergency call";
  document.getElementById("announce").textContent =
    `${known.test ? "Test" : "Real"} ${kind}: ${known.agent || "unidentified phone"}, ${known.dialled || ""}`;
}

function onEmergencyEvent(event) {
  if (!event.call) return;
  if (event.event === "callback_reserved" && event.did && event.expires_at) {
    board.reservations.set(event.did, { agent: event.agent, expires: Date.parse(event.expires_at) });
  }
  if (ENDS.has(event.event)) {
    board.calls.delete(event.call);
    return;
  }
  if (event.event.startsWith("notification_")) return;
  const known = call(event.call);
  for (const field of ["agent", "did", "route", "test", "dialled", "location_source", "site"]) {
    if (event[field] !== undefined && event[field] !== null) known[field] = event[field];
  }
  if (event.event === "dialled" || event.event === "callback_ringing") {
    known.started = known.started || event.timestamp;
  }
  if (event.event === "callback_ringing") known.callback = true;
  if (event.event === "answered" || event.event === "callback_answered") known.state = "answered";
  else if (known.state !== "answered") known.state = event.event.replace("_", " ");
}

function onLockdown(agent, lockdown, retained) {
  if (lockdown.active) {
    const fresh = !board.calls.has(lockdown.call);
    const known = call(lockdown.call);
    if (fresh && retained) known.joined = true; // opened during the call: earlier events unseen
    known.agent = agent;
    known.test = lockdown.test;
    known.started = known.started || lockdown.since;
    known.callback = lockdown.reason === "emergency_callback";
  } else if (lockdown.call) {
    board.calls.delete(lockdown.call);
  } else {
    for (const [id, known] of board.calls) if (known.agent === agent) board.calls.delete(id);
  }
}

function onMessage(topic, payload, retained) {
  const level = topic.slice(board.prefix.length + 1).split("/");
  if (level[0] === "agents" && level.length === 3) {
    const [, agent, kind] = level;
    if (kind === "presence") payload ? board.agents.set(agent, payload) : board.agents.delete(agent);
    if (kind === "location") payload ? board.locations.set(agent, payload) : board.locations.delete(agent);
    if (kind === "lockdown" && payload) onLockdown(agent, payload, retained);
  } else if (level[0] === "emergency" && payload) {
    onEmergencyEvent(payload);
  } else if (level[0] === "nodes" && level[2] === "status") {
    payload ? board.nodes.set(level[1], payload) : board.nodes.delete(level[1]);
  } else if (level[0] === "nodes" && level[2] === "trunks" && level.length === 5) {
    const key = level.slice(1).join("/");
    payload ? board.trunks.set(key, payload) : board.trunks.delete(key);
  }
  render();
}

function alertFor(known) {
  if (!known.shownAt) known.shownAt = Date.now();
  const kind = known.callback ? "Emergency callback" : "Emergency call";
  const where = board.locations.get(known.agent);
  const unseen = known.joined ? "not seen (this page opened during the call)" : null;
  const rows = [
    ["Agent", known.agent || (known.site ? `site ${known.site}` : "unidentified phone")],
    ["Dialled", known.dialled || unseen || "—"],
    ["Route", known.route || unseen || "not chosen yet"],
    ["Callback DID", known.did || unseen || "not reserved yet"],
    ["Location", where ? `${formatLocation(where.location)} (${where.source})` : "no location published"],
    ["Elapsed", known.started ? since(known.started) : "—"],
    ["State", known.state],
  ];
  return el(
    "article",
    {
      class: `alert ${known.test ? "test" : "real"}`,
      "data-call": known.call,
      "data-agent": known.agent || "",
      "data-shown-at": known.shownAt,
      "aria-label": `${kind} by ${known.agent || "unknown"}`,
    },
    el("h3", { text: `⚠ ${known.test ? "TEST" : "REAL"} ${kind.toUpperCase()}` }),
    el("dl", {}, ...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })])),
  );
}

function render() {
  const alerts = document.getElementById("alerts");
  const calls = [...board.calls.values()];
  alerts.replaceChildren(...(calls.length ? calls.map(alertFor) : [el("p", { class: "quiet", text: "None." })]));

  const agents = [...board.agents.entries()].sort(([a], [b]) => a.localeCompare(b));
  document.getElementById("agents").replaceChildren(
    ...agents.map(([agent, p]) =>
      el(
        "tr",
        { "data-agent": agent },
        el("th", { scope: "row", text: agent }),
        el("td", {}, el("span", { class: `presence ${p.status}`, text: p.status })),
        el("td", { text: since(p.timestamp) }),
        el("td", { text: [p.reason, p.note].filter(Boolean).join(": ") }),
      ),
    ),
  );

  const now = Date.now();
  for (const [did, r] of board.reservations) if (r.expires <= now) board.reservations.delete(did);
  document.getElementById("reservations").replaceChildren(
    ...[...board.reservations.entries()].map(([did, r]) =>
      el("tr", {}, el("th", { scope: "row", text: did }), el("td", { text: r.agent || "—" }), el("td", { text: formatDuration(r.expires - now) })),
    ),
  );

  renderTrunks();
  document.getElementById("nodes").replaceChildren(
    ...[...board.nodes.entries()].map(([node, s]) =>
      el("li", { "data-node": node }, el("strong", { text: node }), " ", el("span", { class: `node ${s.status}`, text: s.status }), ` since ${since(s.timestamp)}`),
    ),
  );
}

function renderTrunks() {
  const rows = [...board.trunks.values()].sort((a, b) =>
    `${a.trunk} ${a.gateway} ${a.node}`.localeCompare(`${b.trunk} ${b.gateway} ${b.node}`),
  );
  document.getElementById("trunks").replaceChildren(
    ...rows.map((t) =>
      el(
        "tr",
        { "data-trunk": t.trunk, "data-gateway": t.gateway },
        el("th", { scope: "row", text: t.trunk }),
        el("td", { text: t.gateway }),
        el("td", { text: t.node }),
        // the word, not only the colour (the class colours it)
        el("td", {}, el("span", { class: `trunk ${t.state}`, text: t.state === "down" ? "⚠ DOWN" : "up" })),
        el("td", { text: `${t.reason || ""}, since ${since(t.timestamp)}` }),
      ),
    ),
  );
}

document.addEventListener("DOMContentLoaded", () => {
  signIn({
    role: "wallboard",
    filters: (config) => {
      board.prefix = config.prefix;
      return [
        `${config.prefix}/agents/+/+`,
        `${config.prefix}/emergency/+`,
        `${config.prefix}/nodes/+/status`,
        `${config.prefix}/nodes/+/trunks/#`,
      ];
    },
    onmessage: onMessage,
    onconnect: () => {},
  });
  setInterval(render, 1000);
});
