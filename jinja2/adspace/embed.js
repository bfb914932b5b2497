/* Ad space embed. Install with one line where the ad should appear:
     <script async src="https://THIS-SITE/embed.js" data-campaign="USER/N" data-width="W" data-height="H"></script>
   It inserts an iframe of the ad's exact size right after its own script tag and touches
   nothing else. data-width/data-height reserve the space at once (no layout shift); without
   them the size is fetched from https://THIS-SITE/embed/USER/N.json first.
   Every failure is silent: a missing campaign leaves the page as it was. */
(function () {
  "use strict";
  var BASE = "{{ base_url|escapejs }}";
  var me = document.currentScript;
  // Prefer the address this very script was loaded from (same host, and https when the page is),
  // over the one the server saw, which a TLS-terminating proxy can report as http.
  if (me && me.src && /\/embed\.js(?:[?#].*)?$/.test(me.src)) {
    BASE = me.src.replace(/embed\.js(?:[?#].*)?$/, "");
  }
  var DONE = "data-adspace-embedded";
  var CAMPAIGN = /^[A-Za-z0-9]{1,32}\/(?:0|[1-9][0-9]{0,9})$/;

  function size(value) {
    var n = parseInt(value, 10);
    return n > 0 && n <= 10000 && String(n) === String(value) ? n : 0;
  }

  function insertFrame(script, campaign, width, height) {
    var frame = document.createElement("iframe");
    frame.src = BASE + "embed/" + campaign;
    frame.width = String(width);
    frame.height = String(height);
    frame.title = "Advertisement";
    frame.setAttribute("frameborder", "0");
    frame.setAttribute("scrolling", "no");
    frame.setAttribute("loading", "lazy");
    frame.setAttribute("referrerpolicy", "no-referrer-when-downgrade");
    // The ad opens in a new tab and the placeholder may navigate the page when clicked; the
    // framed page gets nothing else (no scripts, no access to this page).
    frame.setAttribute("sandbox", "allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation");
    script.parentNode.insertBefore(frame, script.nextSibling);
  }

  function place(script) {
    try {
      if (!script || script.getAttribute(DONE) || !script.parentNode) return;
      script.setAttribute(DONE, "1");
      var campaign = script.getAttribute("data-campaign") || "";
      if (!CAMPAIGN.test(campaign)) return;
      var width = size(script.getAttribute("data-width"));
      var height = size(script.getAttribute("data-height"));
      if (width && height) {
        insertFrame(script, campaign, width, height);
        return;
      }
      var xhr = new XMLHttpRequest();
      xhr.open("GET", BASE + "embed/" + campaign + ".json");
      xhr.onload = function () {
        try {
          if (xhr.status !== 200) return;
          var found = JSON.parse(xhr.responseText);
          var w = size(found.width), h = size(found.height);
          if (w && h) insertFrame(script, campaign, w, h);
        } catch (ignored) {}
      };
      xhr.onerror = function () {};
      xhr.send();
    } catch (ignored) {}
  }

  function schemeless(url) {
    return String(url || "").replace(/^https?:/, "");
  }

  function ours(script) {
    // Only script tags that load this file: another vendor's data-campaign is not ours to touch.
    return schemeless(script.src).indexOf(schemeless(BASE) + "embed.js") === 0;
  }

  try {
    place(me);
    var scripts = document.querySelectorAll("script[data-campaign]");
    for (var i = 0; i < scripts.length; i++) {
      if (ours(scripts[i])) place(scripts[i]);
    }
  } catch (ignored) {}
})();
