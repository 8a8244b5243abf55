"use strict";
// The "Record a real server" panel: POST/GET/DELETE /api/v1/record (see record/http.py).
// Uses app.js's api() (token, JSON errors). While the panel is open, the recording is polled
// so its YAML grows as sessions are relayed.

const record = {
  panel: document.getElementById("record"),
  form: document.getElementById("record-form"),
  upstream: document.getElementById("record-upstream"),
  toggle: document.getElementById("record-toggle"),
  status: document.getElementById("record-status"),
  yaml: document.getElementById("record-yaml"),
  serve: document.getElementById("record-serve"),
  running: false,
};

function showRecording(data) {
  record.running = data.recording;
  record.toggle.textContent = data.recording ? "Stop" : "Start";
  record.upstream.disabled = data.recording;
  if (data.upstream && !record.upstream.value) record.upstream.value = data.upstream;
  if (data.recording) {
    const where = `${data.listening.host}:${data.listening.port}`;
    record.status.textContent =
      `Recording ${data.upstream}: point a client at ${where} · ${data.sessions} session(s)`;
  } else if (data.upstream) {
    record.status.textContent = `Stopped · ${data.sessions} session(s) recorded from ${data.upstream}`;
  } else {
    record.status.textContent = "Relays every session to the server you name and writes what it said.";
  }
  record.yaml.hidden = !data.yaml;
  if (record.yaml.textContent !== data.yaml) record.yaml.textContent = data.yaml;
  record.serve.hidden = !data.yaml || data.recording;
}

async function refreshRecording() {
  try {
    showRecording(await api("/record"));
  } catch (error) {
    record.status.textContent = `recording unavailable (${error.message})`;
  }
}

record.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    if (record.running) {
      showRecording(await api("/record", { method: "DELETE" }));
    } else {
      const body = JSON.stringify({ upstream: record.upstream.value.trim() });
      const headers = { "Content-Type": "application/json" };
      showRecording(await api("/record", { method: "POST", body, headers }));
    }
  } catch (error) {
    record.status.textContent = error.message;
  }
});

record.serve.addEventListener("click", async () => {
  try {
    const headers = { "Content-Type": "application/yaml" };
    const scenario = await api("/scenario", { method: "PUT", body: record.yaml.textContent, headers });
    record.status.textContent = `Serving it now: scenario ${scenario.name}, ${scenario.rules.length} rule(s)`;
  } catch (error) {
    record.status.textContent = error.message;
  }
});

async function pollRecording() {
  if (record.panel.open && !document.hidden) await refreshRecording();
  setTimeout(pollRecording, 1000);
}

record.panel.addEventListener("toggle", () => record.panel.open && refreshRecording());
pollRecording();
