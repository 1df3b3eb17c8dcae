// Pieces several views draw: avatars and the checkmarks of a message.

import { el, hueOf, icon, initials } from "../util.js";

export function avatar(name, id, { size = "", group = false } = {}) {
  return el(
    "span",
    { class: `avatar ${size}`, style: `--hue:${hueOf(id)}`, "aria-hidden": "true" },
    group ? icon("group") : initials(name),
  );
}

// WhatsApp-like checkmarks, drawn with strokes so they stay crisp at 16 px.
const TICK_PATHS = {
  check: "M3.5 8.6 6.9 12l8-8.2",
  checks: "M1.2 8.6 4.6 12l8-8.2M8.6 11.2l.8.8 8-8.2",
};
const LABELS = {
  pending: "Sending",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
  expired: "Not delivered",
  failed: "Not sent",
};

export function ticks(status) {
  if (!status) return null;
  const span = el("span", { class: `ticks ticks-${status}`, title: LABELS[status], dataset: { status } });
  if (status === "pending" || status === "expired" || status === "failed") {
    span.append(icon(status === "pending" ? "clock" : "warn", LABELS[status]));
    return span;
  }
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", status === "sent" ? "0 0 18 16" : "0 0 19 16");
  svg.setAttribute("class", "icon tick");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", LABELS[status]);
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", status === "sent" ? TICK_PATHS.check : TICK_PATHS.checks);
  svg.append(path);
  span.append(svg);
  return span;
}
