// The signed-in screen: the chat list beside the open conversation (one at a time
// on a phone), the connection banner, and routing by URL hash (#/c/<id>), so the
// browser's Back button leaves a chat on a phone.

import { el, formatListTime, icon } from "../util.js";
import { avatar, ticks } from "./common.js";
import { ConversationView } from "./conversation.js";
import { confirmDialog, newChatDialog, newGroupDialog } from "./dialogs.js";

export class Shell {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.view = null;
    this.listeners = [];

    const me = app.me;
    this.banner = el("div", { class: "banner", role: "status", "aria-live": "polite", hidden: true });
    this.list = el("ul", { class: "chat-list", role: "list" });
    this.empty = el(
      "div",
      { class: "list-empty", hidden: true },
      el("p", {}, "No chats yet."),
      el("button", { class: "primary", type: "button", onclick: () => this.newChat() }, "Start a chat"),
      el("button", { class: "secondary", type: "button", onclick: () => this.newGroup() }, "Create a group"),
    );
    this.list.addEventListener("keydown", (e) => this.listKeys(e));

    this.sidebar = el(
      "aside",
      { class: "sidebar" },
      el(
        "header",
        { class: "side-header" },
        avatar(me.display_name || me.username, me.id),
        el(
          "div",
          { class: "me" },
          el("span", { class: "me-name" }, me.display_name || me.username),
          el("span", { class: "me-handle" }, `@${me.username}`),
        ),
        el(
          "button",
          {
            class: "icon-btn",
            type: "button",
            "aria-label": "New chat",
            title: "New chat",
            id: "new-chat",
            onclick: () => this.newChat(),
          },
          icon("chat"),
        ),
        el(
          "button",
          {
            class: "icon-btn",
            type: "button",
            "aria-label": "New group",
            title: "New group",
            id: "new-group",
            onclick: () => this.newGroup(),
          },
          icon("group"),
        ),
        el(
          "button",
          {
            class: "icon-btn",
            type: "button",
            "aria-label": "Log out",
            title: "Log out",
            id: "logout",
            onclick: () => this.logout(),
          },
          icon("logout"),
        ),
      ),
      this.banner,
      el(
        "nav",
        { class: "chat-nav", "aria-label": "Chats" },
        el("h2", { class: "visually-hidden" }, "Chats"),
        this.list,
        this.empty,
      ),
    );
    this.main = el("main", { class: "pane", id: "main", tabindex: "-1" });
    this.layout = el("div", { class: "layout", dataset: { view: "list" } }, this.sidebar, this.main);
    root.replaceChildren(this.layout);
    root.removeAttribute("aria-busy");

    this.on(app, "conversations", () => {
      this.renderList();
      // A link to a chat this device learns about only now (a fresh page, a new chat).
      if (!this.view && /^#\/c\//.test(location.hash)) this.route();
    });
    this.on(app, "typing", () => this.renderList());
    this.on(app, "connection", () => this.renderBanner());
    this.on(window, "hashchange", () => this.route());
    this.renderList();
    this.renderBanner();
    this.route();
  }

  on(target, type, fn) {
    target.addEventListener(type, fn);
    this.listeners.push(() => target.removeEventListener(type, fn));
  }

  destroy() {
    for (const off of this.listeners) off();
    this.view?.destroy();
  }

  // -- routing -------------------------------------------------------------------------------

  async route() {
    const match = location.hash.match(/^#\/c\/(c_[0-9]+)$/);
    const id = match ? match[1] : null;
    if (id && id === this.view?.id) return;
    this.view?.destroy();
    this.view = null;
    this.app.openId = id;
    if (id && this.app.conversations.has(id)) {
      this.layout.dataset.view = "chat";
      this.view = new ConversationView(this.main, this.app, id, this);
      await this.view.ready;
    } else {
      this.layout.dataset.view = "list";
      this.main.replaceChildren(
        el(
          "div",
          { class: "pane-empty" },
          el("div", { class: "brand-mark big", "aria-hidden": "true" }, icon("chat")),
          el("h2", {}, "Natter for the web"),
          el("p", {}, "Pick a chat on the left, or start a new one."),
          el("p", { class: "e2e-note" }, icon("lock"), " End-to-end encrypted"),
        ),
      );
      document.title = "Natter";
    }
    this.app.updatePresenceSubscription();
    this.renderList();
  }

  open(id) {
    location.hash = `#/c/${id}`;
  }

  closeChat() {
    const link = this.list.querySelector(`[data-conversation="${this.view?.id}"]`);
    location.hash = "#/";
    link?.focus();
  }

  // -- the chat list -------------------------------------------------------------------------

  renderList() {
    const app = this.app;
    const convs = app.sortedConversations();
    this.empty.hidden = convs.length > 0;
    const focusedId = document.activeElement?.dataset?.conversation;
    const items = convs.map((conv) => this.listItem(conv));
    this.list.replaceChildren(...items);
    if (focusedId) this.list.querySelector(`[data-conversation="${focusedId}"]`)?.focus();
    const total = convs.reduce((n, c) => n + (c.left ? 0 : app.unread(c)), 0);
    const open = this.view ? `${app.conversationTitle(app.conversations.get(this.view.id))} · ` : "";
    document.title = `${total ? `(${total}) ` : ""}${open}Natter`;
  }

  listItem(conv) {
    const app = this.app;
    const title = app.conversationTitle(conv);
    const unread = conv.left ? 0 : app.unread(conv);
    const typers = app.typers(conv.id);
    let preview;
    if (typers.length) {
      preview = el(
        "span",
        { class: "preview typing" },
        conv.kind === "group" ? `${app.userName(typers[0])} is typing…` : "typing…",
      );
    } else {
      const last = conv.last;
      const status = last && last.mine ? app.statusOf({ ...last, type: "message" }, conv) : null;
      preview = el(
        "span",
        { class: "preview" },
        ticks(status),
        last && last.icon ? icon(last.icon) : null,
        el(
          "span",
          { class: "preview-text" },
          last ? app.previewText(last, conv) : conv.left ? "You are no longer a member" : "",
        ),
      );
    }
    const other = conv.kind === "direct" ? app.otherMember(conv) : null;
    const current = this.view?.id === conv.id;
    const label = [
      title,
      unread ? `${unread} unread message${unread > 1 ? "s" : ""}` : null,
      typers.length ? "typing" : conv.last ? app.previewText(conv.last, conv) : null,
      conv.lastTime ? formatListTime(conv.lastTime) : null,
    ]
      .filter(Boolean)
      .join(", ");
    return el(
      "li",
      {},
      el(
        "a",
        {
          class: `chat-item${unread ? " unread" : ""}`,
          href: `#/c/${conv.id}`,
          dataset: { conversation: conv.id, kind: conv.kind },
          "aria-current": current ? "page" : null,
          "aria-label": label,
        },
        avatar(title, other ? other.id : conv.id, { group: conv.kind === "group" }),
        el(
          "span",
          { class: "chat-item-body" },
          el(
            "span",
            { class: "chat-item-top" },
            el("span", { class: "chat-title" }, title),
            el("time", { class: "chat-time" }, formatListTime(conv.lastTime)),
          ),
          el(
            "span",
            { class: "chat-item-bottom" },
            preview,
            unread ? el("span", { class: "badge", dataset: { unread } }, String(unread)) : null,
          ),
        ),
      ),
    );
  }

  listKeys(e) {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    const links = [...this.list.querySelectorAll("a.chat-item")];
    const i = links.indexOf(document.activeElement);
    if (i < 0) return;
    e.preventDefault();
    links[Math.max(0, Math.min(links.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)))].focus();
  }

  // -- banner --------------------------------------------------------------------------------

  renderBanner() {
    const { status, kind, fellBack } = this.app.connection;
    const b = this.banner;
    b.dataset.state = status;
    b.dataset.transport = kind;
    let text = null;
    let action = null;
    if (status === "connecting") text = kind === "longpoll" ? "Connecting (long-poll)…" : "Connecting…";
    else if (status === "offline")
      text = "You are offline. What you write is sent when the connection is back.";
    else if (status === "conflict") {
      text = "Natter is open in another tab or window.";
      action = el(
        "button",
        { type: "button", class: "link-btn", onclick: () => this.app.takeOver() },
        "Use here",
      );
    } else if (status === "online" && kind === "longpoll") {
      text = fellBack ? "Long-poll mode: WebSockets are blocked on this network." : "Long-poll mode.";
    }
    b.hidden = !text;
    b.replaceChildren(...(text ? [el("span", {}, text), action] : []));
  }

  // -- header actions ------------------------------------------------------------------------

  async newChat() {
    const id = await newChatDialog(this.app);
    if (id) this.open(id);
  }

  async newGroup() {
    const id = await newGroupDialog(this.app);
    if (id) this.open(id);
  }

  async logout() {
    const ok = await confirmDialog({
      title: "Log out?",
      text: "This browser stops being one of your devices. Its chat history and keys are deleted from it.",
      confirm: "Log out",
      danger: true,
    });
    if (!ok) return;
    try {
      await this.app.logout();
    } catch (err) {
      await confirmDialog({ title: "Could not log out", text: err.message, confirm: "OK", cancel: null });
    }
  }
}
