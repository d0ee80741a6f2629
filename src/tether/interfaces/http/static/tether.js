// Tether control plane: the little the pages need beyond htmx. No build step.
(function () {
  "use strict";

  // Live regions ([data-live]) re-render from the server every 2 s. Skip a refresh while
  // someone is writing in the region, or just after they decided something in it, so that
  // neither a half-written note nor the answer to their click vanishes under them.
  var HOLD_MS = 8000;

  function edited(field) {
    if (field.type === "radio" || field.type === "checkbox") {
      return field.checked !== field.defaultChecked;
    }
    return field.value !== field.defaultValue;
  }

  function busy(region) {
    var active = document.activeElement;
    if (active && active !== document.body && region.contains(active) &&
        active.matches("input, textarea, select")) {
      return true;
    }
    var fields = region.querySelectorAll("input:not([type=hidden]), textarea, select");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].tagName !== "SELECT" && edited(fields[i])) return true;
    }
    var decided = region.querySelectorAll("[data-acted]");
    for (var j = 0; j < decided.length; j++) {
      if (Date.now() - Number(decided[j].getAttribute("data-acted")) < HOLD_MS) return true;
    }
    return false;
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (elt.hasAttribute("data-live") && busy(elt)) event.preventDefault();
  });

  // Keep the <details> a person opened open across refreshes.
  var opened = {};
  document.addEventListener("htmx:beforeSwap", function (event) {
    var elt = event.detail.elt;
    if (!elt.hasAttribute || !elt.hasAttribute("data-live")) return;
    opened = {};
    elt.querySelectorAll("details[id][open]").forEach(function (d) { opened[d.id] = true; });
  });

  // Times: the server writes them in UTC; show them in the browser's time zone.
  function localTime(element) {
    var moment = new Date(element.getAttribute("datetime"));
    if (isNaN(moment)) return;
    var now = new Date();
    var clock = moment.toLocaleTimeString([], { hour: "numeric", minute: "2-digit", second: "2-digit" });
    if (moment.toDateString() === now.toDateString()) {
      element.textContent = clock;
      return;
    }
    var day = { month: "short", day: "numeric" };
    if (moment.getFullYear() !== now.getFullYear()) day.year = "numeric";
    element.textContent = moment.toLocaleDateString([], day) + ", " + clock;
  }

  // Each element matching selector in root, root included.
  function each(root, selector, fn) {
    if (!root.querySelectorAll) return;
    if (root.matches(selector)) fn(root);
    root.querySelectorAll(selector).forEach(fn);
  }

  htmx.onLoad(function (root) {
    each(root, "time[data-local]", localTime);
    each(root, "[data-decided]:not([data-acted])", function (card) {
      card.setAttribute("data-acted", String(Date.now()));
    });
    each(root, "details[id]", function (d) {
      if (opened[d.id]) d.open = true;
    });
  });

  // The close button of a message in #flash.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-dismiss]");
    if (button && button.parentElement) button.parentElement.remove();
  });
})();
