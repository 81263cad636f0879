// Shared by the wallboard and the desktop: the sign-in form, the live MQTT connection
// (reconnects with backoff; every reconnection re-subscribes and so gets the retained
// state again), and small DOM helpers. No framework.
"use strict";

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function parseJson(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : null;
  } catch {
    return null; // an empty retained message clears a topic
  }
}

// "4 s", "2 min 05 s", "1 h 02 min"
function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

function since(timestamp) {
  const at = Date.parse(timestamp);
  return Number.isNaN(at) ? "" : formatDuration(Date.now() - at);
}

function formatLocation(location) {
  if (!location) return "no location known";
  const line = [location.house_number, location.street].filter(Boolean).join(" ");
  const inside = [
    location.building && `building ${location.building}`,
    location.floor && `floor ${location.floor}`,
    location.room && `room ${location.room}`,
  ].filter(Boolean);
  const town = [location.city, location.state, location.postcode].filter(Boolean).join(" ");
  return [line, ...inside, town, location.country].filter(Boolean).join(", ");
}

function setStatus(text, live) {
  const status = document.getElementById("connection");
  status.textContent = text;
  status.dataset.live = live ? "yes" : "no";
}

// Sign in (POST /login), then keep an MQTT connection with the same credentials.
// page: {role, filters(config) -> [topic filters], onmessage(topic, payload, retained),
//        onconnect(client, config)}
function signIn(page) {
  const form = document.getElementById("login-form");
  const problem = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    const user = form.elements.user.value;
    const password = form.elements.password.value;
    let reply;
    try {
      reply = await fetch("/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user, password }),
      });
    } catch {
      problem.textContent = "The gateway cannot be reached.";
      return;
    }
    const config = await reply.json();
    if (!reply.ok) {
      problem.textContent = config.error || `Sign-in failed (${reply.status}).`;
      return;
    }
    if (config.role !== page.role) {
      problem.textContent = `This login is for the ${config.role} page.`;
      return;
    }
    document.getElementById("login").hidden = true;
    document.getElementById("app").hidden = false;
    document.getElementById("who").textContent = config.user;
    stayConnected(page, config, password);
  });
}

function stayConnected(page, config, password) {
  let delay = 500;
  const clientId = `${config.role}-${config.user}-${Math.random().toString(16).slice(2, 10)}`;
  async function attempt() {
    const client = new MqttClient(config.mqtt_url, {
      username: config.user,
      password,
      clientId,
      keepalive: 30,
    });
    client.onmessage = (topic, text, retained) => page.onmessage(topic, parseJson(text), retained);
    client.onclose = () => {
      setStatus("Disconnected from the broker: reconnecting…", false);
      setTimeout(attempt, delay);
    };
    try {
      await client.connect();
    } catch (error) {
      setStatus(`Not connected: ${error.message}. Retrying…`, false);
      delay = Math.min(delay * 2, 10000);
      setTimeout(attempt, delay);
      return;
    }
    delay = 500;
    setStatus("Live", true);
    client.subscribe(page.filters(config));
    page.onconnect(client, config);
  }
  attempt();
}
