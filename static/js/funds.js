// The Add funds tab: a "Copy address" button. The page works without it (the address can be
// selected by hand), so the button stays hidden unless this script runs and a clipboard exists.
(function () {
  "use strict";

  function setUp(button) {
    if (!navigator.clipboard || !navigator.clipboard.writeText) return;
    var label = button.textContent;
    button.hidden = false;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(button.getAttribute("data-copy")).then(
        function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 2000);
        },
        function () {
          button.textContent = "Copy failed: select the address";
        }
      );
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button[data-copy]").forEach(setUp);
  });
})();
