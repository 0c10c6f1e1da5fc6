// Tap-to-open for the book's static figures (see _config.yml, html_js_files).
//
// On a phone a figure is shown at about half its size, so its text is hard to read. Every
// figure image (a captioned figure, or a PNG output of a notebook cell) is wrapped in a link to
// the image file itself: a tap or click opens the full-size PNG, which the browser lets the
// reader zoom and pan; "back" returns to the page. Images that already sit inside a link
// (logos, badges) and the interactive Vega figures (a canvas, not an image) are left alone.
(function () {
  "use strict";
  var SELECTOR = "figure img, .cell_output img";

  function wrap(img) {
    if (img.closest("a") || !img.getAttribute("src")) return;
    var link = document.createElement("a");
    link.className = "pg-figure-open";
    link.href = img.currentSrc || img.src;
    link.title = "Open the full-size image";
    link.setAttribute("aria-label", "Open the full-size image" +
      (img.alt ? ": " + img.alt : ""));
    img.parentNode.insertBefore(link, img);
    link.appendChild(img);
  }

  function run() {
    var article = document.querySelector(".bd-article") || document.body;
    article.querySelectorAll(SELECTOR).forEach(wrap);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
