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

// ===== WEBSOCKET PANEL: reserved ==========================================================
// The code of the live panel (index.html's #websocket-panel) goes here.
// ===== end of WEBSOCKET PANEL =============================================================

$("signin-form").addEventListener("submit", signIn);
$("chat-form").addEventListener("submit", ask);
$("signout").addEventListener("click", signOut);
show(Boolean(state.token));
