// FANGS dashboard: confirmations, live refresh, bar widths.  No inline
// script anywhere (Content-Security-Policy: default-src 'self').
(function () {
  "use strict";

  // Forms with data-confirm ask first.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var text = form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) {
      ev.preventDefault();
      return;
    }
    var buttons = form.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
  });

  // Widths from data-pct (inline style attributes are blocked by the CSP).
  function sizeBars(root) {
    var segs = root.querySelectorAll("[data-pct]");
    for (var i = 0; i < segs.length; i++) {
      segs[i].style.width = segs[i].getAttribute("data-pct") + "%";
    }
  }

  // Elements with data-refresh-url are re-fetched and swapped in place.
  function live(el) {
    var url = el.getAttribute("data-refresh-url");
    var every = parseInt(el.getAttribute("data-refresh-interval") || "5000", 10);
    if (!(every >= 1000)) every = 5000;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.text();
        })
        .then(function (html) {
          el.innerHTML = html;
          sizeBars(el);
          el.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function (err) { console.warn("refresh of " + url + " failed: " + err); })
        .then(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }

  function start() {
    sizeBars(document);
    var els = document.querySelectorAll("[data-refresh-url]");
    for (var i = 0; i < els.length; i++) live(els[i]);
    // Open the process that holds a linked evidence event.
    function reveal() {
      if (!location.hash) return;
      var target = document.getElementById(location.hash.slice(1));
      if (!target) return;
      var d = target.closest("details");
      while (d) { d.open = true; d = d.parentElement && d.parentElement.closest("details"); }
      target.classList.add("focus");
      target.scrollIntoView({ block: "center" });
    }
    window.addEventListener("hashchange", reveal);
    reveal();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
