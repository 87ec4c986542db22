// Tuneforge console: streamed playground answers and live refresh of work in progress.
// Plain JavaScript, no library: every request carries the session's CSRF token.
"use strict";

const csrfToken = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

async function post(url, body) {
  return fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: JSON.stringify(body),
  });
}

// Reads an NDJSON response progressively, calling onLine with each parsed line.
async function readLines(response, onLine) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
}

function setBadge(card, verdict) {
  const badge = card.querySelector(".badge");
  if (!verdict) {
    badge.textContent = "";
    return;
  }
  badge.textContent = verdict.valid ? "valid JSON" : "invalid JSON";
  badge.className = "badge " + (verdict.valid ? "valid" : "invalid");
  if (!verdict.valid) badge.title = verdict.error;
}

async function answer(card, request) {
  const text = card.querySelector(".text");
  const meta = card.querySelector(".meta");
  card.classList.add("streaming");
  try {
    const response = await post("/api/generate", request);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const error = body.error || {};
      card.classList.add("failed");
      text.textContent = (error.title || "error") + ": " + (error.message || response.status);
      if (response.status === 401) window.location = "/signin?next=/playground";
      return;
    }
    await readLines(response, (line) => {
      if (line.resolved_model) card.querySelector(".resolved").textContent = "→ " + line.resolved_model;
      if (line.delta) text.textContent += line.delta;
      if (line.error) {
        card.classList.add("failed");
        text.textContent += "\n[" + line.error.code + "] " + line.error.message;
      }
      if (line.done) {
        text.textContent = line.json && line.json.valid ? line.json.pretty : line.text;
        setBadge(card, line.json);
        meta.textContent = `${line.usage.prompt_tokens} prompt + ${line.usage.completion_tokens} generated tokens · ${line.finish_reason}`;
        if (line.response_id) setUpRating(card, line.response_id);
        card.dataset.done = "true";
        card.dispatchEvent(new CustomEvent("answered", { bubbles: true, detail: { request, line } }));
      }
    });
  } finally {
    card.classList.remove("streaming");
  }
}

// The rating form of one answer: thumbs, a 1-5 score, a corrected answer, a comment (FeedbackService).
function setUpRating(card, responseId) {
  const form = card.querySelector("form.rating");
  const saved = form.querySelector(".saved");
  form.hidden = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const response = await post("/api/feedback", {
      response_id: responseId,
      rating: data.get("rating") || "",
      score: data.get("score"),
      corrected_answer: data.get("corrected_answer"),
      comment: data.get("comment"),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      saved.textContent = `feedback ${body.id} saved`;
      saved.className = "saved ok";
      card.dataset.feedback = body.id;
    } else {
      const error = body.error || {};
      saved.textContent = error.message || `refused (${response.status})`;
      saved.className = "saved error";
    }
  });
}

function setUpPlayground(form) {
  const answers = document.getElementById("answers");
  const template = document.getElementById("answer-template");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const models = [""].concat(data.getAll("model").filter((m) => m));
    answers.replaceChildren();
    for (const model of models) {
      const card = template.content.firstElementChild.cloneNode(true);
      card.querySelector(".model").textContent = model || answers.dataset.base + " (base)";
      card.dataset.model = model;
      answers.appendChild(card);
      answer(card, {
        model,
        system: data.get("system"),
        user: data.get("user"),
        temperature: data.get("temperature"),
        top_p: data.get("top_p"),
        max_tokens: data.get("max_tokens"),
        seed: data.get("seed"),
      });
    }
  });
}

// An element with data-live="URL" is replaced by that URL's fragment every few seconds, until the
// fragment says it is final (data-final="true").
function setUpLive(element) {
  const refresh = async () => {
    const current = element.querySelector("[data-final]");
    if (current && current.dataset.final === "true") return;
    try {
      const response = await fetch(element.dataset.live, { credentials: "same-origin" });
      if (response.redirected) {
        window.location = response.url; // signed out meanwhile: the sign-in page, not a fragment
        return;
      }
      if (response.ok) element.innerHTML = await response.text();
    } catch (error) {
      console.warn("live refresh failed", error);
    }
    window.setTimeout(refresh, Number(element.dataset.interval || 2000));
  };
  window.setTimeout(refresh, Number(element.dataset.interval || 2000));
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("playground");
  if (form) setUpPlayground(form);
  document.querySelectorAll("[data-live]").forEach(setUpLive);
});
