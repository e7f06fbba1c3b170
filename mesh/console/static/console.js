/* The console's only script: live fragments over server-sent events, and labelling without a
   reload (by click or by key). Every page works without it; it only saves reloads. */
(function () {
  "use strict";
  var body = document.body;
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  // A page opened with ?token= keeps the token out of the address bar and history.
  if (window.location.search.indexOf("token=") >= 0 && window.history.replaceState) {
    var url = new URL(window.location.href);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  function announce(text) {
    var region = document.getElementById("announce");
    if (region) { region.textContent = text; }
  }

  function replace(id, html) {
    var el = document.getElementById(id);
    if (!el) { return; }
    var active = document.activeElement;
    var activeId = active && el.contains(active) ? active.id : null;
    el.innerHTML = html;
    if (activeId) {
      var again = document.getElementById(activeId);
      if (again) { again.focus(); }
    }
  }

  var stream = body.getAttribute("data-stream");
  var status = document.getElementById("connection");
  if (stream && window.EventSource) {
    var source = new EventSource(stream);
    source.addEventListener("open", function () {
      status.textContent = "live updates: on";
      status.className = "connection live";
    });
    source.addEventListener("error", function () {
      status.textContent = "live updates: reconnecting";
      status.className = "connection lost";
    });
    source.addEventListener("fragment", function (event) {
      var message = JSON.parse(event.data);
      replace(message.id, message.html);
    });
  } else if (status) {
    status.textContent = stream ? "live updates: not supported here" : "";
  }

  // Review: a label or a skip goes by fetch; the next item replaces this one.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList || !(form.classList.contains("labels") ||
                             form.classList.contains("skip-form"))) { return; }
    event.preventDefault();
    var data = new FormData(form);
    if (event.submitter && event.submitter.name) {
      data.append(event.submitter.name, event.submitter.value);
    }
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(data),
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf },
      credentials: "same-origin"
    }).then(function (response) {
      return response.json().then(function (reply) { return [response.ok, reply]; });
    }).then(function (result) {
      var ok = result[0], reply = result[1];
      if (reply.html !== undefined) { replace("review-item", reply.html); }
      announce(reply.message || (ok ? "done" : "failed"));
      var heading = document.getElementById("item-heading");
      if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
      if (!ok) { buttons.forEach(function (b) { b.disabled = false; }); }
    }).catch(function () {
      announce("the console did not answer; try again");
      buttons.forEach(function (b) { b.disabled = false; });
    });
  });

  document.addEventListener("keydown", function (event) {
    if (body.getAttribute("data-page") !== "review") { return; }
    if (event.altKey || event.ctrlKey || event.metaKey) { return; }
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select") { return; }
    var panel = document.getElementById("review-item");
    if (!panel) { return; }
    var button = panel.querySelector('button[data-key="' + event.key.toLowerCase() + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
})();
