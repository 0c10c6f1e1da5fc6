// Kernel-free slider figures (physgrad.interactive): draws every figure of a page with the
// vendored Vega / Vega-Lite from _static/vega/ (no network).
//
// A figure's page block holds a JSON document {narrowBelow, datasets, layouts}, where layouts
// has four Vega-Lite specs without data: wide-light, wide-dark, narrow-light, narrow-dark.
// This script
//   * picks the layout by the width of the figure's box (narrow below `narrowBelow` CSS px)
//     and the theme by pydata-sphinx-theme's `data-theme` on <html>;
//   * sizes the panels so that each row of panels fills the box: a first drawing with an
//     estimate of what axes and legends take, then, if a row is too wide or leaves room, one
//     more drawing with the measured space;
//   * draws again when the box is resized or the theme changes, keeping the slider values.
// The inline block written by physgrad.interactive loads this file once and queues the ids of
// its figures in window.__pgvQueue; window.physgradSliders.draw(id) draws one figure.
// window.physgradViews[id] is the current vega.View (the browser tests read it).
(function () {
  "use strict";
  if (window.physgradSliders) return;

  var MIN_W = 150, MAX_W = { 1: 620, 2: 420, 3: 300 }, MIN_H = 150, MAX_H = 360;
  var figures = {};

  function root() {
    var r = document.documentElement.getAttribute("data-content_root");
    if (r !== null) return r;
    var s = document.querySelector('script[src*="_static/sliders.js"]');
    return s ? s.getAttribute("src").split("_static/")[0] : "";
  }

  function addCss() {
    if (document.getElementById("pgv-css")) return;
    var l = document.createElement("link");
    l.id = "pgv-css";
    l.rel = "stylesheet";
    l.href = root() + "_static/sliders.css";
    document.head.appendChild(l);
  }

  var vegaReady = null;
  function loadVega() {
    if (vegaReady) return vegaReady;
    var base = root() + "_static/vega/";
    vegaReady = new Promise(function (ok, fail) {
      if (window.vega && window.vegaLite) return ok();
      if (typeof window.requirejs === "function" && window.define && window.define.amd) {
        // a page with RequireJS (widget pages): Vega registers as an AMD module there
        window.requirejs.config({ paths: { "vega": base + "vega.min", "vega-lite": base + "vega-lite.min" } });
        window.requirejs(["vega", "vega-lite"], function (v, vl) {
          window.vega = v;
          window.vegaLite = vl;
          ok();
        }, fail);
        return;
      }
      function add(src, next) {
        var s = document.createElement("script");
        s.src = src;
        s.onload = next;
        s.onerror = function () { fail(new Error("cannot load " + src)); };
        document.head.appendChild(s);
      }
      add(base + "vega.min.js", function () { add(base + "vega-lite.min.js", ok); });
    });
    return vegaReady;
  }

  function theme() {
    return document.documentElement.getAttribute("data-theme") === "dark" ? "dark" : "light";
  }

  function panelsOf(row) { return row.hconcat || [row]; }

  // Set every panel's size: row i gets (width - over[i]) / (panels in the row), within limits.
  function size(spec, width, over) {
    spec.vconcat.forEach(function (row, i) {
      var ps = panelsOf(row), n = ps.length;
      var w = Math.floor((width - over[i]) / n);
      w = Math.max(MIN_W, Math.min(w, MAX_W[n] || MAX_W[3]));
      ps.forEach(function (p) {
        var h = Math.round(w * p.height / p.width);
        p.width = w;
        p.height = Math.max(MIN_H, Math.min(h, MAX_H));
        (p.layer || []).forEach(function (layer) {
          var enc = layer.encoding || {};
          ["color", "strokeDash"].forEach(function (ch) {
            var leg = enc[ch] && enc[ch].legend;
            if (!leg) return;
            if (leg.gradientLength) {
              leg.gradientLength = leg.orient === "bottom" ? Math.max(100, w - 40) : Math.max(80, p.height - 40);
            } else if (enc[ch].scale && enc[ch].scale.domain && !leg.columns) {
              // as many legend columns as the longest label lets fit under the plot
              var longest = 0;
              enc[ch].scale.domain.forEach(function (d) { longest = Math.max(longest, String(d).length); });
              leg.columns = Math.max(1, Math.min(4, Math.floor(w / (34 + 6.6 * longest))));
            }
          });
        });
      });
    });
    return spec;
  }

  // What each row of the drawn view takes beyond its panels' widths (axes, legends, gaps).
  function measure(view, spec) {
    var top = view.scenegraph().root.items[0], out = [];
    var groups = (top.items || []).filter(function (m) {
      return m.marktype === "group" && /^concat_\d+_group$/.test(m.name || "");
    });
    var widest = 0, used = [];
    spec.vconcat.forEach(function (row, i) {
      var g = groups[i] && groups[i].items[0], u = 0;
      panelsOf(row).forEach(function (p) { u += p.width; });
      used.push(u);
      out.push(g ? Math.ceil(g.bounds.x2 - g.bounds.x1) - u : null);
      if (g) widest = Math.max(widest, u + out[i]);
    });
    // what the whole view adds around its rows (padding, offsets): from the canvas's CSS width
    var canvas = view.container() && view.container().querySelector("canvas");
    var total = canvas ? parseFloat(canvas.style.width) || canvas.getBoundingClientRect().width : 0;
    var extra = total ? Math.max(0, Math.ceil(total - widest)) : 8;
    return out.map(function (m) { return m === null ? null : m + extra; });
  }

  function estimate(spec) {
    return spec.vconcat.map(function (row) {
      var ps = panelsOf(row), o = 8 + 20 * (ps.length - 1) + 62 * ps.length;
      ps.forEach(function (p) {
        (p.layer || []).forEach(function (layer) {
          var leg = layer.encoding && layer.encoding.color && layer.encoding.color.legend;
          if (leg && leg.orient === "right") o += 90;
        });
      });
      return o;
    });
  }

  function render(fig, spec) {
    var box = document.createElement("div");
    box.className = "pgv-view";
    var params = {};
    if (fig.view) {
      spec.params.forEach(function (p) { params[p.name] = fig.view.signal(p.name); });
    }
    spec.params.forEach(function (p) {
      if (p.name in params) p.value = params[p.name];
    });
    var full = Object.assign({ datasets: fig.doc.datasets }, spec);
    var view = new vega.View(vega.parse(vegaLite.compile(full).spec),
      { renderer: "canvas", container: box, hover: false });
    return view.runAsync().then(function () {
      if (fig.view) fig.view.finalize();
      if (fig.box) fig.el.removeChild(fig.box);
      fig.el.appendChild(box);
      fig.box = box;
      fig.view = view;
      (window.physgradViews = window.physgradViews || {})[fig.id] = view;
      return view;
    });
  }

  function width(fig) {
    return Math.max(200, Math.floor(fig.el.clientWidth));
  }

  function draw(fig) {
    var w = width(fig), th = theme();
    var layout = (w < fig.doc.narrowBelow ? "narrow" : "wide");
    var key = layout + "-" + th;
    var base = fig.doc.layouts[key];
    var over = fig.over[layout] || estimate(base);
    fig.drawn = { width: w, theme: th };
    fig.layout = layout;
    fig.el.setAttribute("data-layout", layout);
    // draw, measure what axes and legends take in each row, and draw again with that until
    // every row fits its box (at most three drawings; the space taken changes a little with
    // the panel width, e.g. through the number of legend columns)
    // the page's own background (the theme's CSS variable), so the chart sits flat on the page
    var bg = getComputedStyle(document.documentElement).getPropertyValue("--pst-color-background").trim();
    function pass(over, left) {
      var spec = size(JSON.parse(JSON.stringify(base)), w, over);
      if (bg) spec.config.background = bg;
      return render(fig, spec).then(function (view) {
        var measured = measure(view, spec);
        if (measured.some(function (m) { return m === null; })) return view;
        var again = measured.some(function (m, i) {
          var ps = panelsOf(spec.vconcat[i]), used = 0;
          ps.forEach(function (p) { used += p.width; });
          var capped = ps[0].width >= (MAX_W[ps.length] || MAX_W[3]);
          return used + m > w || (!capped && w - used - m > 12);
        });
        if (!again || left === 0) return view;
        // the last chance errs on the safe side: the larger of the two measurements
        var next = left === 1 ? measured.map(function (m, i) { return Math.max(m, over[i]); }) : measured;
        fig.over[layout] = next;
        return pass(next, left - 1);
      });
    }
    return pass(over, 2);
  }

  var pending = null;
  function redrawAll() {
    clearTimeout(pending);
    pending = setTimeout(function () {
      Object.keys(figures).forEach(function (id) {
        var fig = figures[id];
        if (!fig.view || fig.busy) return;
        var w = width(fig);
        if (Math.abs(w - fig.drawn.width) < 6 && fig.drawn.theme === theme()) return;
        fig.busy = true;
        draw(fig).then(function () { fig.busy = false; }, function () { fig.busy = false; });
      });
    }, 120);
  }

  function start(id) {
    var el = document.getElementById(id), src = document.getElementById(id + "-spec");
    if (!el || !src || figures[id]) return;
    var msg = el.querySelector(".pgv-msg");
    var fig = figures[id] = { id: id, el: el, doc: JSON.parse(src.textContent), over: {}, busy: true };
    loadVega().then(function () { return draw(fig); }).then(function () {
      fig.busy = false;
      redrawAll();  // the box or the theme may have changed while it was drawn
      if (msg) msg.style.display = "none";
      el.setAttribute("data-ready", "1");
      if (window.ResizeObserver) new ResizeObserver(redrawAll).observe(el);
    }).catch(function (e) {
      if (msg) msg.textContent = "The sliders of this figure are drawn by the book's website " +
        "(no kernel needed); here they could not load (" + e + "). With a kernel, use the " +
        "live explorer of notebooks/05-comparison.";
    });
  }

  addCss();
  window.addEventListener("resize", redrawAll);
  new MutationObserver(redrawAll).observe(document.documentElement,
    { attributes: true, attributeFilter: ["data-theme"] });
  window.physgradSliders = { draw: start, figures: figures };
  (window.__pgvQueue || []).forEach(start);
})();
