// The campaign page: the price of the next slot ticking down, and local times next to UTC ones.
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
    var minPrice = intAttr(box, "data-min-price");
    if (serverNow === null || minPrice === null) return;
    var lastPrice = intAttr(box, "data-last-price");
    var purchasedAt = intAttr(box, "data-purchased-at");
    var endsAt = intAttr(box, "data-ends-at");
    if (purchasedAt === null || endsAt === null) lastPrice = null;

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

    function tick() {
      var now = serverSeconds();
      var price = currentPrice(minPrice, lastPrice, purchasedAt, endsAt, now);
      if (displayed === null || price !== displayed) {
        displayed = price;
        var text = formatBtc(price);
        for (var i = 0; i < shown.length; i++) shown[i].textContent = text;
        if (accepted) accepted.value = price.toString();
      }
      if ((lastPrice === null || now >= endsAt) && timer !== null) {
        clearInterval(timer); // at the minimum for good: nothing left to tick
        timer = null;
      }
    }

    tick();
    if (lastPrice !== null && serverSeconds() < endsAt) timer = setInterval(tick, TICK_MS);

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
  }

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

  function init() {
    var box = document.getElementById("price-box");
    if (box && typeof BigInt === "function") startPrice(box);
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
