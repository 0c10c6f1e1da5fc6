// Small fixes for the book's pages (loaded on every page through `html_js_files`).
//
// 1. Sidebar toggles. pydata-sphinx-theme 0.17 adds a header with its own (hidden) ☰ and
//    page-contents buttons, and both themes' scripts bind only the FIRST `.primary-toggle` /
//    `.secondary-toggle` of the page: the hidden ones. The visible buttons in the article header
//    then do nothing (pydata-sphinx-theme #2451, sphinx-book-theme #988). Forward their clicks
//    to the bound buttons: on a phone that opens the drawer, on a desktop it collapses the
//    sidebar.
(function () {
  function forwardToggles() {
    [".primary-toggle", ".secondary-toggle"].forEach(function (selector) {
      var buttons = Array.prototype.slice.call(document.querySelectorAll(selector));
      var bound = buttons.shift();
      if (!bound) return;
      buttons.forEach(function (button) {
        button.addEventListener("click", function (event) {
          event.preventDefault();
          event.stopPropagation();
          bound.click();
        });
      });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", forwardToggles);
  } else {
    forwardToggles();
  }
})();
