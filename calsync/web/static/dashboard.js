// calsync dashboard: refreshes the page's fragments by polling, sorts and filters the
// table, and sends the action forms without leaving the page. No libraries.
(function () {
  "use strict";
  var body = document.body;
  var pollUrl = body.getAttribute("data-poll");
  var sortKey = "id", sortDir = 1;
  var lastVersion = null;

  function $(id) { return document.getElementById(id); }

  function rowValue(row, key) {
    var v = row.getAttribute("data-" + key) || "";
    var n = Number(v);
    return key === "id" || key === "provider" || key === "state" || isNaN(n) ? v : n;
  }

  function applyView() {
    var tbody = $("rows");
    if (!tbody) { return; }
    var provider = $("f-provider").value, state = $("f-state").value;
    var problems = $("f-problems").checked, text = $("f-text").value.toLowerCase();
    var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr[data-id]"));
    rows.sort(function (a, b) {
      var x = rowValue(a, sortKey), y = rowValue(b, sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    rows.forEach(function (row) {
      var show = (!provider || row.getAttribute("data-provider") === provider) &&
        (!state || row.getAttribute("data-state") === state) &&
        (!problems || row.getAttribute("data-problem") === "1") &&
        (!text || row.textContent.toLowerCase().indexOf(text) >= 0);
      row.hidden = !show;
      tbody.appendChild(row);
    });
  }

  function refresh() {
    fetch(pollUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("signed out"); }
        return r.json();
      })
      .then(function (data) {
        if (data.html.rows !== undefined) {
          $("header").innerHTML = data.html.header;
          $("rows").innerHTML = data.html.rows;
          applyView();
        } else if (data.html.detail !== undefined) {
          $("detail").innerHTML = data.html.detail;
        }
        lastVersion = data.version;
        var live = $("live");
        if (live) { live.textContent = "updated " + new Date().toLocaleTimeString(); }
        body.setAttribute("data-version", String(lastVersion));
      })
      .catch(function () { /* the next poll tries again */ });
  }

  function bindActions() {
    var forms = document.querySelectorAll("form.action");
    Array.prototype.forEach.call(forms, function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var button = form.querySelector("button");
        if (button.classList.contains("danger") &&
            !window.confirm("Remove this resource? Its events are deleted downstream.")) {
          return;
        }
        fetch(form.action, {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
          headers: { Accept: "application/json", "X-CSRF-Token": body.getAttribute("data-csrf") },
          credentials: "same-origin"
        }).then(function (r) { return r.json(); }).then(function (data) {
          $("flash").textContent = data.message || data.error || "";
          refresh();
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var heads = document.querySelectorAll("th[data-sort]");
    Array.prototype.forEach.call(heads, function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-sort");
        sortDir = key === sortKey ? -sortDir : 1;
        sortKey = key;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
        applyView();
      });
    });
    ["f-provider", "f-state", "f-problems", "f-text"].forEach(function (id) {
      var el = $(id);
      if (el) { el.addEventListener("input", applyView); el.addEventListener("change", applyView); }
    });
    bindActions();
    applyView();
    if (pollUrl) { window.setInterval(refresh, 2000); }
  });
})();
