// edgeproxy Control Panel: progressive enhancement only (every page works without it).
(function () {
  "use strict";
  // The dashboard refreshes its live part in place.
  var live = document.getElementById("live");
  if (live) {
    var seconds = parseInt(live.getAttribute("data-refresh"), 10) || 5;
    setInterval(function () {
      fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          if (fresh) { live.replaceWith(fresh); live = fresh; }
        })
        .catch(function () { /* keep the last view; the next tick tries again */ });
    }, seconds * 1000);
  }
  // Removals ask first.
  document.querySelectorAll("form.confirm").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm") || "Sure?")) { event.preventDefault(); }
    });
  });
})();
