// The example frontend: sign in through /auth/login, then call the DEMO model through the
// gateway and show its answer as it streams in (server-sent events, OpenAI chat format).
// No build step, no CDN: this file, index.html and app.css are all of it.
"use strict";

const MODEL_PATH = "/models/demo/v1/chat/completions";
const state = {
  token: sessionStorage.getItem("frontend.token"),
  user: sessionStorage.getItem("frontend.user"),
};
const $ = (id) => document.getElementById(id);

// A gateway error is application/problem+json (RFC 9457): its `detail` says why.
async function problem(response) {
  const body = await response.json().catch(() => ({}));
  return body.detail || `${response.status} ${response.statusText}`;
}

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("who").textContent = signedIn && state.user ? `signed in as ${state.user}` : "";
}

function signOut() {
  closeLive();
  state.token = null;
  state.user = null;
  sessionStorage.removeItem("frontend.token");
  sessionStorage.removeItem("frontend.user");
  show(false);
}

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  const response = await fetch("/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ username: $("username").value, password: $("password").value }),
  });
  if (!response.ok) {
    $("signin-error").textContent = await problem(response);
    return;
  }
  const tokens = await response.json();
  state.token = tokens.access_token;
  state.user = $("username").value;
  sessionStorage.setItem("frontend.token", state.token);
  sessionStorage.setItem("frontend.user", state.user);
  $("password").value = "";
  show(true);
}

// One `data:` line of the stream → the text it adds ("" for usage-only chunks).
function deltaOf(data) {
  const chunk = JSON.parse(data);
  return (chunk.choices || []).map((c) => (c.delta && c.delta.content) || "").join("");
}

async function ask(event) {
  event.preventDefault();
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.state = "streaming";
  answer.dataset.chunks = "0";
  $("chat-error").textContent = "";
  $("send").disabled = true;
  try {
    const response = await fetch(MODEL_PATH, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        Authorization: `Bearer ${state.token}`,
      },
      body: JSON.stringify({ stream: true, messages: [{ role: "user", content: $("prompt").value }] }),
    });
    if (response.status === 401) {
      signOut();
      return;
    }
    if (!response.ok) throw new Error(await problem(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop(); // an event cut in two waits for its end
      for (const line of events.flatMap((e) => e.split("\n"))) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        answer.textContent += deltaOf(data);
        answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
      }
    }
    answer.textContent = answer.textContent.trim();
    answer.dataset.state = "done";
  } catch (error) {
    answer.dataset.state = "failed";
    $("chat-error").textContent = String(error.message || error);
  } finally {
    $("send").disabled = false;
  }
}

// The live panel: one WebSocket to the demo model, opened on the first message. A browser
// cannot set headers on a WebSocket, so the token rides as ?access_token= (upgrades only;
// the gateway strips it before forwarding and never logs it).
const LIVE_PATH = "/models/demo/v1/live";
let live = null;

function liveStatus(text, state) {
  $("live-status").textContent = text;
  $("live-status").dataset.state = state;
}

// {"done": true, "model": …} ends an answer; every other frame is a word of it.
function isEnd(data) {
  try {
    return JSON.parse(data).done === true;
  } catch {
    return false;
  }
}

function openLive() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ access_token: state.token });
  const socket = new WebSocket(`${scheme}://${location.host}${LIVE_PATH}?${query}`);
  liveStatus("connecting", "connecting");
  socket.addEventListener("open", () => liveStatus("open", "open"));
  socket.addEventListener("message", (event) => {
    const answer = $("live-answer");
    if (isEnd(event.data)) {
      answer.textContent = answer.textContent.trim();
      answer.dataset.state = "done";
      return;
    }
    answer.textContent += event.data;
    answer.dataset.frames = String(Number(answer.dataset.frames) + 1);
  });
  // 1008: the gateway closed it because the token no longer admits this route (expired,
  // signed out, role changed); 1001: idle or the gateway is restarting.
  socket.addEventListener("close", (event) => {
    live = null;
    liveStatus(`closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`, "closed");
    $("live-status").dataset.code = String(event.code);
  });
  return socket;
}

function sendLive(event) {
  event.preventDefault();
  const answer = $("live-answer");
  answer.textContent = "";
  answer.dataset.state = "streaming";
  answer.dataset.frames = "0";
  const text = $("live-prompt").value;
  if (live === null) live = openLive();
  if (live.readyState === WebSocket.OPEN) live.send(text);
  else live.addEventListener("open", () => live.send(text), { once: true });
}

function closeLive() {
  if (live !== null) live.close(1000, "signed out");
}

$("signin-form").addEventListener("submit", signIn);
$("chat-form").addEventListener("submit", ask);
$("live-form").addEventListener("submit", sendLive);
$("signout").addEventListener("click", signOut);
show(Boolean(state.token));
