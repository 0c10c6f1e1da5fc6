// Offline ipywidgets support (loaded by myst-nb on pages with embedded widget state, between
// require.js and html-manager's embed-amd.js; see _config.yml `nb_ipywidgets_js`).
(function () {
  // 1. The html-manager bundle loads its icon fonts from `window.__jupyter_widgets_assets_path__`;
  //    point it at the copy in _static/html-manager/dist/, found relative to this script so that
  //    it works from any page depth and over file://.
  var me = document.currentScript;
  var base = me && me.src ? me.src.replace(/[^\/]*$/, "") : "_static/";
  var assets = base + "html-manager/dist/";
  window.__jupyter_widgets_assets_path__ = assets;

  // 2. ... but the bundle injects its Font Awesome CSS before it reads that variable, so the
  //    @font-face URLs point next to the page (6 failed requests). Rewrite them to the copy in
  //    _static/ as soon as the <style> element appears, before any font is requested.
  var FONT = /url\((["']?)[^)"']*?([0-9a-f]{20}\.(?:woff2|woff|ttf|eot|svg))/g;
  function fix(style) {
    var css = style.textContent;
    if (!css || css.indexOf("@font-face") < 0) return;
    var fixed = css.replace(FONT, function (m, quote, file) { return "url(" + quote + assets + file; });
    if (fixed !== css) style.textContent = fixed;
  }
  new MutationObserver(function (records) {
    records.forEach(function (r) {
      if (r.target.nodeName === "STYLE") fix(r.target);
      else if (r.target.parentNode && r.target.parentNode.nodeName === "STYLE") fix(r.target.parentNode);
      r.addedNodes.forEach(function (n) { if (n.nodeName === "STYLE") fix(n); });
    });
  }).observe(document.head, {childList: true, subtree: true, characterData: true});

  // 3. Widget labels call MathJax 2's `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`;
  //    the book loads MathJax 3, which has no Hub (a TypeError per label). Give every value of
  //    window.MathJax (the config object now, MathJax 3 itself once loaded) a Hub whose Queue
  //    typesets the element with MathJax 3.
  var hub = {
    Queue: function (job) {
      var mj = window.MathJax, element = job && job[2];
      if (element && mj && typeof mj.typesetPromise === "function") {
        mj.typesetPromise([element]).catch(function () {});
      }
    }
  };
  function withHub(value) {
    if (value && typeof value === "object" && !("Hub" in value)) {
      try { value.Hub = hub; } catch (e) { /* a frozen object: leave it */ }
    }
    return value;
  }
  var mathjax = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return mathjax; },
    set: function (value) { mathjax = withHub(value); }
  });
})();
