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

  // Elements with data-refresh-url are re-fetched and swapped in place:
  // at once when the run stream (data-stream-url) says a run moved, and
  // every data-refresh-interval ms as a fallback (rarely, while the stream
  // is open).
  function live(el) {
    var url = el.getAttribute("data-refresh-url");
    var every = parseInt(el.getAttribute("data-refresh-interval") || "5000", 10);
    if (!(every >= 1000)) every = 5000;
    var timer = null;
    var streaming = false;
    function tick() {
      if (timer) window.clearTimeout(timer);
      timer = null;
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
        .then(function () { timer = window.setTimeout(tick, streaming ? every * 12 : every); });
    }
    timer = window.setTimeout(tick, every);
    follow(el, function (open) { streaming = open; }, tick);
  }

  // Reads the NDJSON run stream; calls moved() (debounced) on run lines and
  // reconnects with the last cursor when the stream breaks.
  function follow(el, state, moved) {
    var url = el.getAttribute("data-stream-url");
    if (!url || !window.fetch || !window.TextDecoder || !window.ReadableStream) return;
    var since = "";
    var pending = null;
    function changed() {
      if (!pending) pending = window.setTimeout(function () { pending = null; moved(); }, 250);
    }
    function open() {
      var target = url + (since ? (url.indexOf("?") < 0 ? "?" : "&") + "since=" + since : "");
      fetch(target, { credentials: "same-origin", headers: { "Accept": "application/x-ndjson" } })
        .then(function (r) {
          if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
          var reader = r.body.getReader();
          var decoder = new TextDecoder();
          var buf = "";
          el.setAttribute("data-stream", "open");
          state(true);
          function pump() {
            return reader.read().then(function (res) {
              if (res.done) throw new Error("the stream ended");
              buf += decoder.decode(res.value, { stream: true });
              var i;
              while ((i = buf.indexOf("\n")) >= 0) {
                var text = buf.slice(0, i);
                buf = buf.slice(i + 1);
                if (!text.trim()) continue;
                var line = JSON.parse(text);
                if (line.cursor && line.type !== "stream.keepalive") since = line.cursor;
                if (line.type.indexOf("run.") === 0) changed();
              }
              return pump();
            });
          }
          return pump();
        })
        .catch(function (err) {
          el.setAttribute("data-stream", "closed");
          state(false);
          console.warn("run stream: " + err + "; reconnecting");
          window.setTimeout(open, 3000);
        });
    }
    open();
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
