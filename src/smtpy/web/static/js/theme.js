// Light or dark: the stored choice, else the system's. Loaded in <head> before the
// stylesheet so the first paint already has the right theme (no flash).
(function () {
  "use strict";
  var KEY = "smtpy-theme";
  var root = document.documentElement;
  var system = window.matchMedia("(prefers-color-scheme: dark)");

  function stored() {
    try {
      var value = window.localStorage.getItem(KEY);
      return value === "dark" || value === "light" ? value : null;
    } catch (e) {
      return null;
    }
  }

  function effective() {
    return stored() || (system.matches ? "dark" : "light");
  }

  function apply() {
    var theme = effective();
    root.setAttribute("data-theme", theme);
    var button = document.getElementById("theme-toggle");
    if (button) {
      button.setAttribute("aria-pressed", theme === "dark" ? "true" : "false");
    }
  }

  apply();
  system.addEventListener("change", apply);
  document.addEventListener("DOMContentLoaded", apply);
  document.addEventListener("htmx:after:settle", apply);
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("#theme-toggle");
    if (!button) return;
    var next = effective() === "dark" ? "light" : "dark";
    try {
      window.localStorage.setItem(KEY, next);
    } catch (e) {
      // private mode: the choice lasts for this page only
    }
    apply();
  });
})();
