// The dashboard's own behaviour (loaded before Alpine, which is the CSP build:
// components are registered here, never written inline).
(function () {
  "use strict";

  // After a form is sent in place (hx-boost), put the keyboard focus where the user
  // must look: the first field in error, else the form's error, else the success
  // message, else the page's content. Other updates (live lists) leave focus alone.
  var formSent = false;
  document.addEventListener("htmx:before:request", function (event) {
    var ctx = event.detail && event.detail.ctx;
    formSent = !!(ctx && ctx.sourceElement && ctx.sourceElement.tagName === "FORM");
  });
  document.addEventListener("htmx:after:settle", function () {
    if (!formSent) return;
    formSent = false;
    var target =
      document.querySelector("[aria-invalid='true']") ||
      document.querySelector(".form-error") ||
      document.querySelector(".flash") ||
      document.getElementById("main");
    if (target) {
      if (!target.matches("input, select, textarea, button, a, [tabindex]")) {
        target.setAttribute("tabindex", "-1");
      }
      target.focus();
    }
  });

  document.addEventListener("alpine:init", function () {
    var Alpine = window.Alpine;

    // <div x-data="copy"> <code x-ref="text">…</code> <button x-on:click="copy" x-text="label">Copy</button>
    Alpine.data("copy", function () {
      return {
        label: "Copy",
        copy: function () {
          var self = this;
          var text = this.$refs.text ? this.$refs.text.textContent.trim() : "";
          navigator.clipboard.writeText(text).then(function () {
            self.label = "Copied";
            setTimeout(function () {
              self.label = "Copy";
            }, 2000);
          });
        },
      };
    });

    // <div x-data="disclosure"> <button x-on:click="toggle" x-bind:aria-expanded="open">…</button> <div x-show="open">
    Alpine.data("disclosure", function () {
      return {
        open: false,
        toggle: function () {
          this.open = !this.open;
        },
      };
    });
  });
})();
