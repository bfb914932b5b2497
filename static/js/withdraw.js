// The Withdraw tab: fee and total updated as you type, and "Withdraw everything" without a
// round trip. The server does the same sums (bitcoinkeys/withdrawals.py withdrawal_fee and
// max_withdrawal) and checks everything again; this only saves a click on "Preview".
//
// Integers in satoshis as BigInt: parsing "0.1" as a float and multiplying gives 10000000.000000002.
// The fee is amount * permille / 1000 rounded up, exactly as fee_up() does it.
(function () {
  "use strict";

  var SATS_PER_BTC = 100000000n;
  // The shapes parse_btc (accounts/money.py) accepts; anything else shows a dash, and the
  // server explains what is wrong when the form is sent.
  var PLAIN = /^(?:[0-9]+(?:\.[0-9]{0,8})?|\.[0-9]{1,8})$/;
  var MAX_SATS = 21000000n * SATS_PER_BTC;

  function formatBtc(sats) {
    var whole = sats / SATS_PER_BTC;
    var frac = (sats % SATS_PER_BTC).toString().padStart(8, "0");
    return whole.toString() + "." + frac;
  }

  function parseBtc(text) {
    var s = text.trim();
    if (!PLAIN.test(s)) return null;
    var parts = s.split(".");
    var whole = parts[0] === "" ? 0n : BigInt(parts[0]);
    var frac = (parts[1] || "").padEnd(8, "0");
    var sats = whole * SATS_PER_BTC + BigInt(frac);
    return sats > MAX_SATS ? null : sats;
  }

  function feeUp(amount, permille) {
    return (amount * permille + 999n) / 1000n; // ceil for non-negative BigInts
  }

  function intAttr(el, name) {
    var raw = el.getAttribute(name);
    return raw !== null && /^[0-9]+$/.test(raw) ? BigInt(raw) : null;
  }

  function start(form) {
    var permille = intAttr(form, "data-fee-permille");
    var maxAmount = intAttr(form, "data-max-amount");
    var amount = form.querySelector('input[name="amount"]');
    var feeOut = form.querySelector('[data-role="fee"]');
    var totalOut = form.querySelector('[data-role="total"]');
    var maxButton = form.querySelector('[data-role="withdraw-max"]');
    if (permille === null || !amount || !feeOut || !totalOut) return;

    function update() {
      var sats = parseBtc(amount.value);
      if (sats === null) {
        feeOut.textContent = "\u2014";
        totalOut.textContent = "\u2014";
        return;
      }
      var fee = feeUp(sats, permille);
      feeOut.textContent = formatBtc(fee);
      totalOut.textContent = formatBtc(sats + fee);
    }

    amount.addEventListener("input", update);
    if (maxButton && maxAmount !== null) {
      maxButton.addEventListener("click", function (event) {
        event.preventDefault();
        amount.value = formatBtc(maxAmount);
        update();
        amount.focus();
      });
    }
    update();
  }

  function init() {
    var forms = document.querySelectorAll('[data-role="withdraw-form"]');
    for (var i = 0; i < forms.length; i++) start(forms[i]);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
