// Offline ipywidgets support (loaded by myst-nb on pages with embedded widget state, between
// require.js and html-manager's embed-amd.js; see _config.yml `nb_ipywidgets_js`).
// The html-manager bundle loads its icon fonts from `window.__jupyter_widgets_assets_path__`;
// point it at the copy in _static/html-manager/dist/, found relative to this script so that it
// works from any page depth and over file://.
(function () {
  var me = document.currentScript;
  var base = me && me.src ? me.src.replace(/[^\/]*$/, "") : "_static/";
  window.__jupyter_widgets_assets_path__ = base + "html-manager/dist/";
})();
