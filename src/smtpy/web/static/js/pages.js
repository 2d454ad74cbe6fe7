// The mail pages' behaviour: charts drawn from the numbers their table also shows
// (canvas.chart[data-chart]), and live lists fed by Server-Sent Events ([data-live]:
// each event's data is one rendered row, put first). No inline script: CSP 'self'.
(function () {
  "use strict";
  if (window.smtpyPages) {
    window.smtpyPages.init();
    return;
  }

  var SERIES = [
    ["received", "Received", "#2563eb"],
    ["forwarded", "Forwarded", "#15803d"],
    ["bounced", "Bounced", "#b45309"],
    ["rejected", "Rejected", "#b91c1c"],
    ["deferred", "Deferred", "#7c3aed"],
  ];
  var streams = [];

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function drawCharts() {
    if (!window.Chart) return;
    document.querySelectorAll("canvas.chart[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) return;
      canvas.dataset.drawn = "1";
      var points = JSON.parse(canvas.dataset.chart);
      var text = cssVar("--text", "#222");
      var grid = cssVar("--border", "#ccc");
      var datasets = SERIES.filter(function (s) {
        return points.length && points[0][s[0]] !== undefined;
      }).map(function (s) {
        return {
          label: s[1],
          data: points.map(function (p) { return p[s[0]]; }),
          backgroundColor: s[2],
          borderColor: s[2],
          borderWidth: 2,
          pointRadius: 2,
        };
      });
      new window.Chart(canvas, {
        type: canvas.dataset.chartKind || "bar",
        data: { labels: points.map(function (p) { return p.t; }), datasets: datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          plugins: { legend: { labels: { color: text } } },
          scales: {
            x: { ticks: { color: text }, grid: { color: grid } },
            y: { beginAtZero: true, ticks: { color: text, precision: 0 }, grid: { color: grid } },
          },
        },
      });
    });
  }

  function follow() {
    streams = streams.filter(function (s) {
      if (document.body.contains(s.el)) return true;
      s.source.close(); // its list left the page (an in-place update)
      return false;
    });
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (el.dataset.liveOn) return;
      el.dataset.liveOn = "1";
      var keep = parseInt(el.dataset.liveKeep || "0", 10);
      var source = new EventSource(el.dataset.live);
      source.addEventListener("message", function (event) {
        var template = document.createElement("template");
        template.innerHTML = event.data.trim();
        var node = template.content.firstElementChild;
        if (!node || (node.id && document.getElementById(node.id))) return;
        node.classList.add("live-new");
        el.insertBefore(node, el.firstElementChild);
        var section = el.closest("section") || el.parentElement;
        var empty = section && section.querySelector(".live-empty");
        if (empty) empty.hidden = true;
        if (el.closest("table")) {
          var wrap = el.closest("table").parentElement;
          var none = wrap && wrap.parentElement && wrap.parentElement.querySelector(".live-empty");
          if (none) none.hidden = true;
        }
        while (keep && el.children.length > keep) el.removeChild(el.lastElementChild);
      });
      streams.push({ el: el, source: source });
    });
  }

  function init() {
    drawCharts();
    follow();
  }

  window.smtpyPages = { init: init };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
  document.addEventListener("htmx:after:settle", init);
  window.addEventListener("pagehide", function () {
    streams.forEach(function (s) { s.source.close(); });
  });
})();
