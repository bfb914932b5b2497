// The campaign page: the price of the next slot ticking down, live updates of what a sale, a
// slot boundary, a pause or a review changes (polled, see startLive), and local times next to
// UTC ones.
//
// The price formula is the server's (adspace/pricing.py current_price), in integers (BigInt:
// (2P - M) * seconds overflows a double's 53 bits), rounded half up, never below the minimum.
// Time is the server's: offset = serverNow - clientNow when the page loaded, so a wrong clock on
// the visitor's machine does not matter. The page took some time to arrive, so our estimate of
// the server's time is a little early, and the price we show a little high: the server then
// sells at its own (lower or equal) price, and never refuses a price we showed as too low.
(function () {
  "use strict";

  var SATS_PER_BTC = 100000000n;
  var TICK_MS = 100;
  var POLL_MS = 1000;

  function formatBtc(sats) {
    var whole = sats / SATS_PER_BTC;
    var frac = (sats % SATS_PER_BTC).toString().padStart(8, "0");
    return whole.toString() + "." + frac;
  }

  function intAttr(el, name) {
    var raw = el.getAttribute(name);
    return raw === null || raw === "" || !/^[0-9]+$/.test(raw) ? null : BigInt(raw);
  }

  // Same as pricing.current_price(min, last, now), all arguments BigInt.
  function currentPrice(minPrice, lastPrice, purchasedAt, endsAt, now) {
    if (lastPrice === null) return minPrice;
    if (now < purchasedAt) now = purchasedAt;
    if (now >= endsAt) return minPrice;
    var num = (2n * lastPrice - minPrice) * (endsAt - now);
    var den = endsAt - purchasedAt;
    var price = minPrice + (2n * num + den) / (2n * den); // BigInt division floors (num >= 0)
    return price < minPrice ? minPrice : price;
  }

  function startPrice(box) {
    var serverNow = intAttr(box, "data-server-now");
    if (serverNow === null || intAttr(box, "data-min-price") === null) return null;
    // The curve the price follows; a live update replaces it (setCurve).
    var curve = {};

    var offsetMs = Number(serverNow) * 1000 - Date.now();
    var shown = box.querySelectorAll('[data-role="price"]');
    var accepted = box.querySelector('[data-role="accepted-price"]');
    var form = box.querySelector('[data-role="buy-form"]');
    var displayed = null;
    var timer = null;

    function serverSeconds() {
      // Floor: an earlier second means a higher price, the safe side.
      return BigInt(Math.floor((Date.now() + offsetMs) / 1000));
    }

    function settled(now) {
      return curve.lastPrice === null || now >= curve.endsAt;
    }

    function tick() {
      var now = serverSeconds();
      var price = currentPrice(curve.minPrice, curve.lastPrice, curve.purchasedAt, curve.endsAt, now);
      if (displayed === null || price !== displayed) {
        displayed = price;
        var text = formatBtc(price);
        for (var i = 0; i < shown.length; i++) shown[i].textContent = text;
        // The buy form accepts the price on screen, so a buy after a live update is priced on
        // the new curve and never refused as "price changed".
        if (accepted) accepted.value = price.toString();
      }
      if (settled(now) && timer !== null) {
        clearInterval(timer); // at the minimum for good: nothing left to tick
        timer = null;
      }
    }

    function setCurve(minPrice, lastPrice, purchasedAt, endsAt) {
      if (purchasedAt === null || endsAt === null) lastPrice = null;
      curve = { minPrice: minPrice, lastPrice: lastPrice, purchasedAt: purchasedAt, endsAt: endsAt };
      displayed = null;
      tick();
      if (timer === null && !settled(serverSeconds())) timer = setInterval(tick, TICK_MS);
    }

    setCurve(
      intAttr(box, "data-min-price"),
      intAttr(box, "data-last-price"),
      intAttr(box, "data-purchased-at"),
      intAttr(box, "data-ends-at")
    );

    if (form) {
      form.addEventListener("submit", function (event) {
        if (form.getAttribute("data-sent") === "1") {
          event.preventDefault(); // a double click would try to buy the slot after this one
          return;
        }
        // The accepted price is exactly the one on screen when the button was pressed.
        if (accepted && displayed !== null) accepted.value = displayed.toString();
        form.setAttribute("data-sent", "1");
        var button = form.querySelector('[data-role="buy-button"]');
        if (button) button.disabled = true;
      });
      // Coming back through the history cache: the page is live again, so is the button.
      window.addEventListener("pageshow", function (event) {
        if (!event.persisted) return;
        form.removeAttribute("data-sent");
        var button = form.querySelector('[data-role="buy-button"]');
        if (button) button.disabled = false;
      });
    }
    return setCurve;
  }

  function bigOrNull(value) {
    return typeof value === "number" && isFinite(value) ? BigInt(value) : null;
  }

  // Live updates (adspace/live.py): poll the campaign's head about once a second with the ETag
  // we hold; a 304 (nothing changed) is almost every answer. On a change, swap in the parts the
  // server rendered and follow the new price curve. Without JavaScript the page is simply what
  // the server rendered, and a reload shows the truth.
  function startLive(box, setCurve) {
    var url = box.getAttribute("data-live-url");
    var etag = box.getAttribute("data-live-etag");
    if (!url || !etag || typeof fetch !== "function") return;
    var curveKey = null; // the chart is redrawn only when the curve itself changes
    var failures = 0;
    var busy = false;

    function apply(head) {
      var last = head.last || {};
      var key = [head.minPrice, last.price, last.purchasedAt, last.endsAt].join("/");
      if (setCurve) {
        setCurve(
          bigOrNull(head.minPrice),
          bigOrNull(last.price),
          bigOrNull(last.purchasedAt),
          bigOrNull(last.endsAt)
        );
      }
      var parts = head.parts || {};
      for (var name in parts) {
        if (!Object.prototype.hasOwnProperty.call(parts, name)) continue;
        if (name === "chart" && key === curveKey) continue;
        var old = document.querySelector('[data-live-part="' + name + '"]');
        if (!old) continue;
        var holder = document.createElement("div");
        holder.innerHTML = parts[name]; // the server's own escaped markup
        var fresh = holder.firstElementChild;
        if (fresh) {
          old.replaceWith(fresh);
          addLocalTimes(fresh);
        }
      }
      curveKey = key;
      var whens = document.querySelectorAll("[data-live-when]");
      for (var i = 0; i < whens.length; i++) {
        var paused = whens[i].getAttribute("data-live-when") === "paused";
        whens[i].hidden = paused !== Boolean(head.paused);
      }
      var sold = document.querySelector('[data-live-text="slotsSold"]');
      if (sold && typeof head.slotsSold === "number") sold.textContent = String(head.slotsSold);
    }

    function poll() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, {
        headers: { "If-None-Match": etag, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      })
        .then(function (response) {
          if (response.status === 304) return null;
          if (!response.ok) throw new Error("live update: " + response.status);
          var fresh = response.headers.get("ETag");
          return response.json().then(function (head) {
            apply(head);
            if (fresh) etag = fresh;
          });
        })
        .then(function () {
          failures = 0;
        })
        .catch(function () {
          failures += 1; // back off: skip polls while the server is struggling
        })
        .then(function () {
          busy = false;
        });
    }

    var skip = 0;
    setInterval(function () {
      if (skip > 0) {
        skip -= 1;
        return;
      }
      poll();
      skip = Math.min(failures * failures, 30);
    }, POLL_MS);
    // A tab brought back to the front asks at once rather than at its next turn.
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
  }

  function addLocalTimes(root) {
    var times = (root || document).querySelectorAll("time.utc[datetime]");
    for (var i = 0; i < times.length; i++) {
      var when = new Date(times[i].getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      var local = document.createElement("span");
      local.className = "local-time";
      local.textContent = " (" + when.toLocaleString() + " your time)";
      times[i].insertAdjacentElement("afterend", local);
    }
  }

  function init() {
    var box = document.getElementById("price-box");
    if (box && typeof BigInt === "function") startLive(box, startPrice(box));
    addLocalTimes();
  }

  if (typeof module === "object" && module.exports) {
    // Loaded by the test suite under Node, to check the price against the server's formula.
    module.exports = { currentPrice: currentPrice, formatBtc: formatBtc };
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
