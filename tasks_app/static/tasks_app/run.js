// A run's page: follows its state, progress and log while it runs, by polling
// RunAdmin.live_view with the id of the last log line it has (an offset), once a second, slower
// while nothing changes or after errors; it stops once the run has finished. Without this
// script the page shows what it had when it was drawn.
"use strict";

(function () {
  const live = document.getElementById("run-live");
  if (!live || live.dataset.finished === "true") {
    return;
  }
  const FAST = 1000;
  const SLOWEST = 15000;
  const log = document.getElementById("run-log");
  const bar = document.getElementById("run-progress");
  const barText = document.getElementById("run-progress-text");
  const status = document.getElementById("run-live-status");
  let after = live.dataset.after || "0";
  let delay = FAST;
  let state = "";

  function say(text) {
    status.textContent = text;
  }

  function append(lines) {
    const empty = log.querySelector(".run-log-empty");
    if (empty && lines.length) {
      empty.remove();
    }
    const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    for (const line of lines) {
      const item = document.createElement("li");
      item.className = "log-" + String(line.level).toLowerCase();
      const at = document.createElement("time");
      at.textContent = line.at;
      const level = document.createElement("span");
      level.className = "log-level";
      level.textContent = line.level;
      const message = document.createElement("span");
      message.className = "log-message";
      message.textContent = line.message;
      item.append(at, " ", level, " ", message);
      log.append(item);
    }
    if (follow) {
      log.scrollTop = log.scrollHeight;
    }
  }

  function show(data) {
    bar.value = data.progress.fraction;
    bar.textContent = data.progress.percent + "%";
    barText.textContent =
      data.progress.percent + "%" + (data.progress.message ? " · " + data.progress.message : "");
    if (data.state !== state) {
      state = data.state;
      // The first fieldset's state badge (the server's own markup, escaped there).
      const badge = document.querySelector(".field-state_mark .readonly");
      if (badge) {
        badge.innerHTML = data.badge;
      }
    }
  }

  // The buttons were drawn for the state the page was drawn in, and the title names it: once the
  // run has ended, neither holds.
  function settle(final) {
    for (const button of document.querySelectorAll("button.run-control")) {
      button.disabled = true;
      button.title = "The run has ended: reload the page for the controls its state allows.";
    }
    const drawn = live.dataset.state;
    if (drawn) {
      document.title = document.title.replace("(" + drawn + ")", "(" + final + ")");
      const heading = document.querySelector("#content h1, #content h2");
      if (heading) {
        heading.textContent = heading.textContent.replace("(" + drawn + ")", "(" + final + ")");
      }
    }
  }

  async function poll() {
    let changed = false;
    try {
      const response = await fetch(live.dataset.url + "?after=" + encodeURIComponent(after), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const data = await response.json();
      changed = data.lines.length > 0 || data.state !== state;
      append(data.lines);
      show(data);
      after = String(data.after);
      if (data.finished) {
        say("The run has finished (" + data.state + "): reload the page for its outcome.");
        settle(data.state);
        return;
      }
      say("Following the run: " + data.state + ", attempt " + data.attempt + ".");
      delay = changed ? FAST : Math.min(delay * 1.5, SLOWEST);
    } catch (error) {
      delay = Math.min(delay * 2, SLOWEST);
      say("Could not reach the server (" + error.message + "); trying again in " + Math.round(delay / 1000) + " s.");
    }
    window.setTimeout(poll, delay);
  }

  window.setTimeout(poll, FAST);
})();
