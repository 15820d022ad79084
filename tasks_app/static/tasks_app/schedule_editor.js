// The schedule editor: as the cron expression or the zone changes, ask the API's preview
// (POST /api/v1/schedules/preview/, with the admin's session) for the expression in words and
// its next fire times, and show what it refuses under the field. The page reads without this
// script: the server wrote the same box (#schedule-preview, tasks_app/admin/schedules.py).
(function () {
  "use strict";

  var DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  var WAIT_MS = 300; // typing pauses this long before a request: not one per key

  // "2026-03-02T09:00:00-05:00" -> "Mon 2026-03-02 09:00:00 -05:00", as the server writes it.
  function zoned(iso) {
    var date = iso.slice(0, 10);
    var ymd = date.split("-");
    var day = new Date(Date.UTC(+ymd[0], +ymd[1] - 1, +ymd[2])).getUTCDay();
    var offset = iso.slice(19).replace(/^\.\d+/, "");
    return DAYS[day] + " " + date + " " + iso.slice(11, 19) + " " + offset;
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text; // never markup: the API echoes what was typed
    return node;
  }

  function init() {
    var box = document.getElementById("schedule-preview");
    var cron = document.getElementById("id_cron");
    if (!box || !cron) return; // a view-only page: nothing is typed
    var zone = document.getElementById("id_timezone");
    var token = cron.form && cron.form.querySelector("input[name=csrfmiddlewaretoken]");
    var served = box.innerHTML; // the server's, for the stored schedule
    var count = parseInt(box.dataset.count, 10) || 10;
    var timer = null;
    var asked = 0; // answers to an older request are dropped
    var controller = null;

    function clearErrors() {
      var old = document.querySelectorAll(".preview-errors");
      for (var i = 0; i < old.length; i++) old[i].remove();
    }

    function showErrors(problems) {
      clearErrors();
      Object.keys(problems).forEach(function (field) {
        var input = document.getElementById("id_" + field) || cron;
        var list = element("ul", "errorlist preview-errors");
        list.id = field + "-preview-errors";
        [].concat(problems[field]).forEach(function (message) {
          list.appendChild(element("li", "", String(message)));
        });
        input.insertAdjacentElement("afterend", list);
      });
      box.classList.add("stale"); // what it lists is the last expression the API accepted
    }

    function say(text) {
      box.replaceChildren(element("p", "schedule-preview-problem", text));
    }

    function render(answer) {
      clearErrors();
      box.classList.remove("stale");
      var heading = element("p", "next-fires-heading", "Next " + answer.next_runs.length + " fire time(s) in ");
      heading.appendChild(element("span", "schedule-zone", (zone && zone.value.trim()) || "UTC"));
      heading.appendChild(document.createTextNode(":"));
      var list = element("ol", "next-fires");
      answer.next_runs.forEach(function (iso) {
        var item = element("li", "next-fire");
        var time = element("time", "", zoned(iso));
        time.setAttribute("datetime", iso);
        item.appendChild(time);
        list.appendChild(item);
      });
      box.replaceChildren(element("p", "schedule-description", answer.description), heading, list);
    }

    function ask() {
      var expression = cron.value.trim();
      if (controller) controller.abort();
      if (!expression) {
        clearErrors();
        box.classList.remove("stale");
        if (box.dataset.kind !== "cron") box.innerHTML = served;
        else say("No cron expression: an interval's or an instant's fire times show once saved.");
        return;
      }
      var mine = ++asked;
      controller = new AbortController();
      fetch(box.dataset.previewUrl, {
        method: "POST",
        credentials: "same-origin",
        signal: controller.signal,
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": token ? token.value : "",
        },
        body: JSON.stringify({
          cron: expression,
          timezone: (zone && zone.value.trim()) || "UTC",
          count: count,
        }),
      })
        .then(function (response) {
          return response
            .json()
            .catch(function () {
              return {};
            })
            .then(function (body) {
              if (mine !== asked) return;
              if (response.ok) render(body);
              else if (response.status === 400) showErrors(body);
              else say("No preview: the server answered " + response.status + ".");
            });
        })
        .catch(function (error) {
          if (error.name !== "AbortError" && mine === asked) say("No preview: the server cannot be reached.");
        });
    }

    function changed() {
      clearTimeout(timer);
      timer = setTimeout(ask, WAIT_MS);
    }

    cron.addEventListener("input", changed);
    if (zone) {
      zone.addEventListener("input", changed);
      zone.addEventListener("change", changed);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
