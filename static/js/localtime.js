// Local times next to the UTC ones a page prints: <time class="utc" datetime="..."> gets
// " (... your time)" after it. A static file, as the strict CSP allows no inline script.
(function () {
  "use strict";

  function addLocalTimes() {
    var times = document.querySelectorAll("time.utc[datetime]");
    for (var i = 0; i < times.length; i++) {
      var when = new Date(times[i].getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      var local = document.createElement("span");
      local.className = "local-time";
      local.textContent = " (" + when.toLocaleString() + " your time)";
      times[i].insertAdjacentElement("afterend", local);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", addLocalTimes);
  } else {
    addLocalTimes();
  }
})();
