// Log in / create an account. Logging in makes this browser a new device: its
// keys are made here, kept in IndexedDB and their public halves uploaded.

import { ApiError, NetworkError } from "../api.js";
import { el, icon } from "../util.js";

function errorText(err) {
  if (err instanceof NetworkError) return "Cannot reach the server. Check your connection and try again.";
  if (err instanceof ApiError) {
    if (err.code === "unauthorized") return "Wrong username or password.";
    if (err.code === "rate_limited")
      return `Too many attempts. Try again in ${err.data.retry_after || 60} seconds.`;
    if (err.code === "conflict") return "This username is taken. Pick another one.";
    if (err.data.fields) {
      return Object.entries(err.data.fields)
        .map(([field, msgs]) => `${field.replace("_", " ")}: ${[].concat(msgs).join(" ")}`)
        .join(" ");
    }
    return err.message;
  }
  return err.message || String(err);
}

export function renderAuth(root, { message, onLogin, onRegister }) {
  let mode = "login";
  root.replaceChildren();
  root.removeAttribute("aria-busy");
  document.title = "Natter — log in";

  const status = el("p", { class: "auth-error", role: "alert", id: "auth-error" });
  if (message) status.textContent = message;
  const username = el("input", {
    id: "auth-username",
    name: "username",
    autocomplete: "username",
    autocapitalize: "none",
    spellcheck: "false",
    required: true,
    maxlength: 150,
  });
  const displayName = el("input", {
    id: "auth-display",
    name: "display_name",
    autocomplete: "name",
    maxlength: 150,
  });
  const password = el("input", {
    id: "auth-password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
    minlength: 8,
  });
  const displayRow = el(
    "div",
    { class: "field", hidden: true },
    el("label", { for: "auth-display" }, "Your name ", el("span", { class: "hint" }, "(shown to others)")),
    displayName,
  );
  const submit = el("button", { type: "submit", class: "primary wide" }, "Log in");
  const heading = el("h2", { id: "auth-heading" }, "Log in");
  const tabLogin = el(
    "button",
    { type: "button", role: "tab", "aria-selected": "true", id: "tab-login" },
    "Log in",
  );
  const tabRegister = el(
    "button",
    { type: "button", role: "tab", "aria-selected": "false", id: "tab-register" },
    "Create account",
  );

  const setMode = (m) => {
    mode = m;
    const reg = m === "register";
    heading.textContent = reg ? "Create your account" : "Log in";
    submit.textContent = reg ? "Create account" : "Log in";
    displayRow.hidden = !reg;
    password.autocomplete = reg ? "new-password" : "current-password";
    tabLogin.setAttribute("aria-selected", String(!reg));
    tabRegister.setAttribute("aria-selected", String(reg));
    status.textContent = "";
    username.focus();
  };
  tabLogin.addEventListener("click", () => setMode("login"));
  tabRegister.addEventListener("click", () => setMode("register"));

  const form = el(
    "form",
    { class: "auth-form", "aria-labelledby": "auth-heading", novalidate: true },
    heading,
    el("div", { class: "field" }, el("label", { for: "auth-username" }, "Username"), username),
    displayRow,
    el("div", { class: "field" }, el("label", { for: "auth-password" }, "Password"), password),
    status,
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const u = username.value.trim();
    if (!u || !password.value) {
      status.textContent = "Enter a username and a password.";
      (u ? password : username).focus();
      return;
    }
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    status.textContent = "";
    submit.textContent = mode === "register" ? "Creating your keys…" : "Logging in…";
    try {
      if (mode === "register") await onRegister(u, displayName.value.trim(), password.value);
      else await onLogin(u, password.value);
    } catch (err) {
      status.textContent = errorText(err);
      submit.disabled = false;
      form.removeAttribute("aria-busy");
      submit.textContent = mode === "register" ? "Create account" : "Log in";
      password.focus();
    }
  });

  root.append(
    el(
      "main",
      { class: "auth", id: "main" },
      el(
        "div",
        { class: "auth-card" },
        el(
          "div",
          { class: "brand" },
          el("div", { class: "brand-mark", "aria-hidden": "true" }, icon("chat")),
          el("h1", {}, "Natter"),
          el("p", { class: "tagline" }, "Private messages, end-to-end encrypted."),
        ),
        el(
          "div",
          { class: "tabs", role: "tablist", "aria-label": "Log in or create an account" },
          tabLogin,
          tabRegister,
        ),
        form,
        el(
          "p",
          { class: "auth-foot" },
          icon("lock"),
          " Your keys are made in this browser and never leave it. Logging in adds this browser as a new device.",
        ),
      ),
    ),
  );
  username.focus();
}
