// Modal dialogs on the native <dialog>: it traps focus and closes on Escape;
// we give focus back to whatever opened it.

import { ApiError, NetworkError } from "../api.js";
import { el, icon } from "../util.js";
import { avatar } from "./common.js";

let dialogSeq = 0;

function errorText(err) {
  if (err instanceof NetworkError) return "You are offline. Try again when the connection is back.";
  if (err instanceof ApiError) {
    if (err.code === "not_found") return "No user has this username.";
    if (err.code === "not_admin") return "Only the group's admins can do this.";
    if (err.code === "group_full") return `The group is full (${err.data.max_members} members at most).`;
    if (err.code === "rate_limited") return "Too many requests. Wait a moment and try again.";
    return err.message;
  }
  return err.message || String(err);
}

/** A dialog; resolves with the value passed to close(), or null on Escape / cancel. */
function openDialog({ title, className = "", build }) {
  const opener = document.activeElement;
  const id = `dlg-${++dialogSeq}`;
  const dialog = el("dialog", { class: `dialog ${className}`, "aria-labelledby": `${id}-title` });
  let result = null;
  const close = (value = null) => {
    result = value;
    dialog.close();
  };
  const header = el(
    "div",
    { class: "dialog-header" },
    el("h2", { id: `${id}-title` }, title),
    el(
      "button",
      { type: "button", class: "icon-btn", "aria-label": "Close", onclick: () => close(null) },
      icon("close"),
    ),
  );
  dialog.append(header, ...[].concat(build(close, id)));
  document.body.append(dialog);
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) close(null); // a click on the backdrop
  });
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    });
    dialog.showModal();
    const first = dialog.querySelector("[autofocus], input, textarea, .dialog-body button");
    (first || header.querySelector("button")).focus();
  });
}

export function confirmDialog({ title, text, confirm = "OK", cancel = "Cancel", danger = false }) {
  return openDialog({
    title,
    className: "small",
    build: (close) => [
      el("p", { class: "dialog-text" }, text),
      el(
        "div",
        { class: "dialog-actions" },
        cancel
          ? el("button", { type: "button", class: "secondary", onclick: () => close(false) }, cancel)
          : null,
        el(
          "button",
          {
            type: "button",
            class: danger ? "danger" : "primary",
            autofocus: true,
            onclick: () => close(true),
          },
          confirm,
        ),
      ),
    ],
  });
}

/** Find someone by exact username and open the chat with them. Resolves to the conversation id. */
export function newChatDialog(app) {
  return openDialog({
    title: "New chat",
    className: "small",
    build: (close, id) => {
      const input = el("input", {
        id: `${id}-user`,
        autocomplete: "off",
        autocapitalize: "none",
        spellcheck: "false",
        required: true,
        placeholder: "alice",
      });
      const error = el("p", { class: "form-error", role: "alert" });
      const submit = el("button", { type: "submit", class: "primary" }, "Start chat");
      const form = el(
        "form",
        { class: "dialog-body" },
        el("label", { for: `${id}-user` }, "Their exact username"),
        el("div", { class: "input-prefix" }, el("span", { "aria-hidden": "true" }, "@"), input),
        el("p", { class: "hint" }, "Natter has no directory: ask your contact for their username."),
        error,
        el("div", { class: "dialog-actions" }, submit),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!input.value.trim()) return input.focus();
        submit.disabled = true;
        error.textContent = "";
        try {
          close(await app.startDirect(input.value));
        } catch (err) {
          error.textContent = errorText(err);
          submit.disabled = false;
          input.focus();
        }
      });
      return form;
    },
  });
}

/** Pick a name and members (by exact username); resolves to the new group's id. */
export function newGroupDialog(app) {
  return openDialog({
    title: "New group",
    build: (close, id) => {
      const picked = new Map(); // user id -> user
      const title = el("input", {
        id: `${id}-title-input`,
        required: true,
        maxlength: 100,
        placeholder: "Climbing friends",
      });
      const user = el("input", {
        id: `${id}-member`,
        autocomplete: "off",
        autocapitalize: "none",
        spellcheck: "false",
        placeholder: "username",
      });
      const chips = el("ul", { class: "chips", "aria-label": "Members to add" });
      const error = el("p", { class: "form-error", role: "alert" });
      const renderChips = () =>
        chips.replaceChildren(
          ...[...picked.values()].map((u) =>
            el(
              "li",
              { class: "chip" },
              avatar(u.display_name || u.username, u.id, { size: "small" }),
              el("span", {}, u.display_name || u.username),
              el(
                "button",
                {
                  type: "button",
                  class: "icon-btn small",
                  "aria-label": `Remove ${u.display_name || u.username}`,
                  onclick: () => (picked.delete(u.id), renderChips(), user.focus()),
                },
                icon("close"),
              ),
            ),
          ),
        );
      const add = async () => {
        const name = user.value.trim();
        if (!name) return;
        error.textContent = "";
        try {
          const u = await app.lookupUser(name);
          if (u.id === app.me.id) throw new Error("You are in the group already.");
          picked.set(u.id, u);
          app.rememberUsers([u]);
          user.value = "";
          renderChips();
        } catch (err) {
          error.textContent = errorText(err);
        }
        user.focus();
      };
      user.addEventListener("keydown", (e) => {
        if (e.key === "Enter") {
          e.preventDefault();
          add();
        }
      });
      const submit = el("button", { type: "submit", class: "primary" }, "Create group");
      const form = el(
        "form",
        { class: "dialog-body" },
        el("label", { for: `${id}-title-input` }, "Group name"),
        title,
        el("label", { for: `${id}-member` }, "Add members by exact username"),
        el(
          "div",
          { class: "row" },
          user,
          el("button", { type: "button", class: "secondary", id: `${id}-add`, onclick: add }, "Add"),
        ),
        chips,
        error,
        el("div", { class: "dialog-actions" }, submit),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!title.value.trim()) {
          error.textContent = "Give the group a name.";
          return title.focus();
        }
        if (user.value.trim()) await add();
        submit.disabled = true;
        try {
          close(await app.createGroup(title.value.trim(), [...picked.keys()]));
        } catch (err) {
          error.textContent = errorText(err);
          submit.disabled = false;
        }
      });
      return form;
    },
  });
}

/** Members and admins; admins add, remove and promote; anyone leaves. */
export function groupInfoDialog(app, groupId, onVerify) {
  return openDialog({
    title: "Group info",
    build: (close, id) => {
      const body = el("div", { class: "dialog-body group-info" });
      const error = el("p", { class: "form-error", role: "alert" });
      const act = async (fn) => {
        error.textContent = "";
        try {
          await fn();
        } catch (err) {
          error.textContent = errorText(err);
        }
        render();
      };
      // The fields live across re-renders (a group event may arrive while one types).
      const rename = el("input", { id: `${id}-rename`, maxlength: 100 });
      const addInput = el("input", {
        id: `${id}-add-user`,
        autocomplete: "off",
        autocapitalize: "none",
        spellcheck: "false",
        placeholder: "username",
      });
      const addMember = () =>
        act(async () => {
          const name = addInput.value.trim();
          if (!name) return;
          const u = await app.lookupUser(name);
          app.rememberUsers([u]);
          await app.groupAction(groupId, "add", [u.id]);
          addInput.value = "";
        });
      addInput.addEventListener("keydown", (e) => {
        if (e.key === "Enter") {
          e.preventDefault();
          addMember();
        }
      });
      const render = () => {
        const conv = app.conversations.get(groupId);
        const isAdmin = (conv.admins || []).includes(app.me.id) && !conv.left;
        const members = [...conv.members].sort(
          (a, b) =>
            (b.id === app.me.id) - (a.id === app.me.id) ||
            (a.display_name || a.username).localeCompare(b.display_name || b.username),
        );
        if (document.activeElement !== rename) rename.value = conv.title;
        const focused = document.activeElement?.id;
        body.replaceChildren(
          el(
            "div",
            { class: "group-head" },
            avatar(conv.title, conv.id, { size: "large", group: true }),
            el(
              "div",
              {},
              el("h3", {}, conv.title),
              el(
                "p",
                { class: "muted" },
                `Group · ${conv.members.length} member${conv.members.length === 1 ? "" : "s"}`,
              ),
            ),
          ),
          isAdmin
            ? el(
                "form",
                {
                  class: "row",
                  onsubmit: (e) => (
                    e.preventDefault(),
                    act(() => app.groupAction(groupId, "rename", rename.value.trim()))
                  ),
                },
                el("label", { for: `${id}-rename`, class: "visually-hidden" }, "Group name"),
                rename,
                el("button", { type: "submit", class: "secondary" }, "Rename"),
              )
            : null,
          el("h3", { class: "section" }, "Members"),
          el(
            "ul",
            { class: "member-list", "aria-label": "Members" },
            ...members.map((m) => {
              const name = m.id === app.me.id ? "You" : m.display_name || m.username || "Someone";
              const admin = (conv.admins || []).includes(m.id);
              return el(
                "li",
                { class: "member", dataset: { user: m.id } },
                avatar(m.display_name || m.username, m.id),
                el(
                  "span",
                  { class: "member-name" },
                  el("span", {}, name),
                  m.username ? el("span", { class: "muted" }, `@${m.username}`) : null,
                ),
                admin ? el("span", { class: "admin-badge" }, "Admin") : null,
                el(
                  "span",
                  { class: "member-actions" },
                  m.id !== app.me.id
                    ? el(
                        "button",
                        {
                          type: "button",
                          class: "link-btn",
                          "aria-label": `Verify security code with ${name}`,
                          onclick: () => onVerify(m.id),
                        },
                        "Verify",
                      )
                    : null,
                  isAdmin && m.id !== app.me.id && !admin
                    ? el(
                        "button",
                        {
                          type: "button",
                          class: "link-btn",
                          "aria-label": `Make ${name} an admin`,
                          onclick: () => act(() => app.groupAction(groupId, "promote", m.id)),
                        },
                        "Make admin",
                      )
                    : null,
                  isAdmin && m.id !== app.me.id
                    ? el(
                        "button",
                        {
                          type: "button",
                          class: "link-btn danger",
                          "aria-label": `Remove ${name}`,
                          onclick: () => act(() => app.groupAction(groupId, "remove", m.id)),
                        },
                        "Remove",
                      )
                    : null,
                ),
              );
            }),
          ),
          isAdmin
            ? el(
                "div",
                { class: "add-member" },
                el("label", { for: `${id}-add-user` }, "Add a member by exact username"),
                el(
                  "div",
                  { class: "row" },
                  addInput,
                  el(
                    "button",
                    { type: "button", class: "secondary", id: `${id}-add-btn`, onclick: addMember },
                    "Add",
                  ),
                ),
              )
            : null,
          error,
          conv.left
            ? el("p", { class: "muted" }, "You are no longer a member of this group.")
            : el(
                "div",
                { class: "dialog-actions" },
                el(
                  "button",
                  {
                    type: "button",
                    class: "danger",
                    id: `${id}-leave`,
                    onclick: async () => {
                      const ok = await confirmDialog({
                        title: "Leave the group?",
                        text: `You will stop getting messages from “${conv.title}”.`,
                        confirm: "Leave",
                        danger: true,
                      });
                      if (!ok) return;
                      await act(() => app.groupAction(groupId, "leave"));
                      if (!error.textContent) close(true);
                    },
                  },
                  "Leave group",
                ),
              ),
        );
        if (focused) document.getElementById(focused)?.focus();
      };
      const onGroup = (e) => e.detail === groupId && render();
      app.addEventListener("group", onGroup);
      queueMicrotask(() => {
        // Stop listening once the dialog is gone.
        const dlg = body.closest("dialog");
        dlg?.addEventListener("close", () => app.removeEventListener("group", onGroup));
      });
      render();
      app.refreshGroup(groupId).catch(() => {});
      return body;
    },
  });
}

/** The 60-digit safety number with one contact, and whether their keys changed. */
export function safetyDialog(app, userId) {
  return openDialog({
    title: "Verify security code",
    className: "safety",
    build: () => {
      const name = app.userName(userId);
      const digits = el(
        "div",
        { class: "safety-number", "aria-busy": "true", role: "group", "aria-label": "Security code" },
        "Computing…",
      );
      const changed = [...app.conversations.values()].some(
        (c) => c.identityChanged && c.identityChanged[userId],
      );
      app
        .safetyNumber(userId)
        .then((number) => {
          digits.removeAttribute("aria-busy");
          digits.replaceChildren(...number.split(" ").map((g) => el("span", { class: "digits" }, g)));
          digits.dataset.number = number;
        })
        .catch((err) => {
          digits.removeAttribute("aria-busy");
          digits.textContent = errorText(err);
        });
      return el(
        "div",
        { class: "dialog-body" },
        el("div", { class: "safety-head" }, avatar(name, userId, { size: "large" }), el("h3", {}, name)),
        changed
          ? el(
              "p",
              { class: "safety-changed", role: "note" },
              icon("warn"),
              ` ${name}’s security code changed recently: a new device or a reinstall. Compare the numbers again.`,
            )
          : null,
        digits,
        el(
          "p",
          { class: "muted" },
          `Compare these numbers with the ones on ${name}’s screen, in person or on a call. ` +
            "If they match, nobody is in the middle of your end-to-end encrypted chats. " +
            "They change when either of you adds a device or gets new keys.",
        ),
      );
    },
  });
}

/** A decrypted image, full size, with a link to save it. */
export function imageViewer({ url, name, caption }) {
  return openDialog({
    title: name || "Image",
    className: "viewer",
    build: () =>
      el(
        "div",
        { class: "dialog-body viewer-body" },
        el("img", { src: url, alt: caption || name || "image", class: "viewer-img" }),
        caption ? el("p", {}, caption) : null,
        el(
          "div",
          { class: "dialog-actions" },
          el(
            "a",
            { href: url, download: name || "image", class: "button secondary" },
            icon("download"),
            " Save",
          ),
        ),
      ),
  });
}
