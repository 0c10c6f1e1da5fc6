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

// 2. The download menu offers the whole book as one PDF (written by tools/build_pdf.py next to
//    index.html), besides the theme's per-page source files and its print-this-page entry.
(function () {
  function addBookPdf() {
    var menus = document.querySelectorAll(".dropdown-download-buttons ul.dropdown-menu");
    if (!menus.length) return;
    var root = document.documentElement.getAttribute("data-content_root") || "";
    Array.prototype.forEach.call(menus, function (menu) {
      if (menu.querySelector(".btn-download-book-pdf")) return;
      var li = document.createElement("li");
      var a = document.createElement("a");
      a.href = root + "inverting-gradients.pdf";
      a.className = "btn btn-sm dropdown-item btn-download-book-pdf";
      a.title = "The whole book as one PDF";
      a.setAttribute("download", "");
      a.innerHTML = '<span class="btn__icon-container"><i class="fas fa-book"></i></span>' +
        '<span class="btn__text-container">Book (PDF)</span>';
      li.appendChild(a);
      menu.appendChild(li);
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", addBookPdf);
  } else {
    addBookPdf();
  }
})();

// 3. Paper: before printing, scale down what is still wider than the text column (a long display
//    equation, a wide table, an interactive chart), so that nothing is cut off at the right edge.
//    tools/build_pdf.py calls the same function after switching to print media.
(function () {
  var SELECTOR = "mjx-container[display='true'], div.output.text_html > table, .pgv canvas";
  function fit() {
    Array.prototype.forEach.call(document.querySelectorAll(SELECTOR), function (el) {
      el.style.zoom = "";
      var box = el.parentElement;
      while (box && box.clientWidth === 0) box = box.parentElement;
      if (!box) return;
      var avail = box.clientWidth, need = el.scrollWidth;
      if (need > avail + 1) el.style.zoom = String(Math.max(0.45, (avail - 2) / need));
    });
  }
  function unfit() {
    Array.prototype.forEach.call(document.querySelectorAll(SELECTOR), function (el) {
      el.style.zoom = "";
    });
  }
  window.physgradFitForPrint = fit;
  window.addEventListener("beforeprint", fit);
  window.addEventListener("afterprint", unfit);
})();

// 4. The search page opened from disk (file://): the browser may not read the pages' text, so
//    results come without snippets. Say so, and how to get them.
(function () {
  function note() {
    if (location.protocol !== "file:") return;
    var box = document.querySelector("#search-results") || document.querySelector(".bd-search-container");
    if (!box || document.querySelector(".search-file-note")) return;
    var p = document.createElement("p");
    p.className = "search-file-note";
    p.textContent = "Opened from disk, the results list pages without text snippets. To see " +
      "snippets, serve the folder, e.g. `python -m http.server -d _build/html`, and open " +
      "http://localhost:8000/search.html.";
    box.parentNode.insertBefore(p, box);
  }
  if (!/(^|\/)search\.html$/.test(location.pathname)) return;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", note);
  } else {
    note();
  }
})();
