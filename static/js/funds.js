// The Add funds tab: a "Copy address" button. The page works without it (the address can be
// selected by hand), so the button is only created when this script runs and a clipboard exists.
(function () {
  "use strict";

  function addCopyButton(row) {
    if (!navigator.clipboard || !navigator.clipboard.writeText) return;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "button secondary";
    button.textContent = "Copy address";
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(row.getAttribute("data-copy-address")).then(
        function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy address"; }, 2000);
        },
        function () {
          button.textContent = "Copy failed: select the address";
        }
      );
    });
    row.appendChild(button);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-copy-address]").forEach(addCopyButton);
  });
})();
