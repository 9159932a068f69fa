// The run page's live status: polls the run's status (JSON) every 1.5 s and updates the
// table in place with textContent only (never HTML).  When every job is final it loads
// the page again (without its ?done= message), so the results show.  Served from 'self': the dashboard's
// Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var table = document.getElementById("status");
  if (!table) { return; }
  var url = table.getAttribute("data-status-url");
  var wasFinal = table.getAttribute("data-final") === "true";
  var note = document.getElementById("live-note");
  var KINDS = ["queued", "running", "held", "refused", "failed", "done", "cancelled", "unknown"];

  function show(text) {
    if (note) { note.hidden = !text; note.textContent = text || ""; }
  }

  function setState(el, kind, label) {
    KINDS.forEach(function (k) { el.classList.remove(k); });
    el.classList.add(KINDS.indexOf(kind) >= 0 ? kind : "unknown");
    el.textContent = label;
  }

  function update(doc) {
    doc.jobs.forEach(function (job) {
      var rows = table.querySelectorAll("tr[data-site]");
      for (var i = 0; i < rows.length; i++) {
        if (rows[i].getAttribute("data-site") === job.site) {
          setState(rows[i].querySelector("[data-role=label]"), job.kind, job.label);
          rows[i].querySelector("[data-role=attempt]").textContent = String(job.attempt);
        }
      }
    });
    var state = document.getElementById("run-state");
    if (state) {
      ["running", "done", "cancelled"].forEach(function (k) { state.classList.remove(k); });
      state.classList.add(doc.state);
      state.textContent = doc.state;
    }
    var progress = document.getElementById("run-progress");
    if (progress) { progress.textContent = doc.done + " of " + doc.total + " sites final"; }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { throw new Error("Your session ended: reload the page to log in again."); }
        if (!r.ok) { throw new Error("The status could not be read (HTTP " + r.status + "); retrying."); }
        return r.json();
      })
      .then(function (doc) {
        show("");
        update(doc);
        if (doc.final) {
          if (!wasFinal) { window.location.replace(window.location.pathname); }
          return;
        }
        window.setTimeout(poll, 1500);
      })
      .catch(function (err) {
        show(err.message);
        window.setTimeout(poll, 3000);
      });
  }

  if (!wasFinal) {
    table.setAttribute("data-live", "true");
    window.setTimeout(poll, 1500);
  }
}());
