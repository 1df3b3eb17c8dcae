// One open conversation: header (presence, typing), the timeline in seq order
// with checkmarks, replies, media and group events, and the composer.

import { dayKey, el, formatBytes, formatDay, formatLastSeen, formatTime, hueOf, icon } from "../util.js";
import { groupInfoDialog, imageViewer, safetyDialog } from "./dialogs.js";
import { avatar, ticks } from "./common.js";

const URL_RE = /\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)\]'’]/g;

/** Text with its links made clickable, built from text nodes (never innerHTML). */
function linkified(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(el("a", { href: m[0], target: "_blank", rel: "noopener noreferrer" }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

export class ConversationView {
  constructor(container, app, id, shell) {
    this.container = container;
    this.app = app;
    this.id = id;
    this.shell = shell;
    this.nodes = new Map(); // key -> {node, sig}
    this.listeners = [];
    this.replyTo = null;
    this.visible = new Map(); // element -> seq, the timeline rows on screen
    this.atBottom = true;
    this.ready = this.mount();
  }

  get conv() {
    return this.app.conversations.get(this.id);
  }

  on(target, type, fn) {
    target.addEventListener(type, fn);
    this.listeners.push(() => target.removeEventListener(type, fn));
  }

  destroy() {
    this.destroyed = true;
    for (const off of this.listeners) off();
    this.observer?.disconnect();
    this.app.typingStop();
  }

  async mount() {
    const app = this.app;
    await app.loadMessages(this.id);
    if (this.destroyed) return;
    this.buildHeader();
    this.list = el("ol", {
      class: "messages",
      id: "messages",
      "aria-labelledby": "chat-title",
      tabindex: "0",
      dataset: { conversation: this.id },
    });
    this.scroller = el("div", { class: "scroller" }, this.list);
    this.jump = el(
      "button",
      {
        class: "jump",
        type: "button",
        hidden: true,
        "aria-label": "Jump to latest messages",
        onclick: () => this.scrollToBottom(true),
      },
      "↓",
    );
    this.buildComposer();
    this.container.replaceChildren(
      el(
        "section",
        { class: "chat", "aria-labelledby": "chat-title" },
        this.header,
        el("div", { class: "scroll-wrap" }, this.scroller, this.jump),
        this.composerWrap,
      ),
    );
    this.observer = new IntersectionObserver((entries) => this.onIntersect(entries), {
      root: this.scroller,
      threshold: 0.01,
    });
    this.on(this.scroller, "scroll", () => {
      this.atBottom = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 80;
      this.jump.hidden = this.atBottom;
    });
    this.on(app, "messages", (e) => (e.detail === null || e.detail === this.id) && this.renderMessages());
    this.on(app, "conversations", () => this.renderHeader());
    this.on(app, "presence", () => this.renderHeader());
    this.on(app, "typing", (e) => e.detail === this.id && this.renderHeader());
    this.on(app, "group", (e) => e.detail === this.id && (this.renderHeader(), this.renderComposerState()));
    this.on(app, "upload", () => this.renderMessages());
    this.on(app, "media", () => this.renderMessages());
    this.on(document, "visibilitychange", () => this.checkRead());
    this.list.addEventListener("keydown", (e) => this.listKeys(e));
    this.scroller.addEventListener("dragover", (e) => {
      if (e.dataTransfer?.types?.includes("Files")) e.preventDefault();
    });
    this.scroller.addEventListener("drop", (e) => {
      e.preventDefault();
      for (const f of e.dataTransfer.files) this.sendFile(f);
    });

    this.renderHeader();
    this.renderComposerState();
    this.renderMessages();
    this.scrollToFirstUnread();
    if (this.conv.kind === "group") this.app.refreshGroup(this.id).catch(() => {});
    if (!matchMedia("(pointer: coarse)").matches) this.input.focus();
  }

  // -- header --------------------------------------------------------------------------------

  buildHeader() {
    this.titleEl = el("h2", { id: "chat-title", class: "chat-title" });
    this.subEl = el("span", { class: "chat-sub", id: "chat-sub" });
    this.avatarSlot = el("span", { class: "avatar-slot" });
    this.identBtn = el(
      "button",
      { type: "button", class: "chat-ident", onclick: () => this.showInfo() },
      this.avatarSlot,
      el("span", { class: "chat-ident-text" }, this.titleEl, this.subEl),
    );
    this.safetyBtn = el(
      "button",
      {
        type: "button",
        class: "icon-btn",
        id: "safety-btn",
        "aria-label": "Verify security code",
        title: "Verify security code",
        onclick: () => this.showSafety(),
      },
      icon("shield"),
    );
    this.infoBtn = el(
      "button",
      {
        type: "button",
        class: "icon-btn",
        id: "group-info-btn",
        "aria-label": "Group info",
        title: "Group info",
        onclick: () => this.showInfo(),
      },
      icon("info"),
    );
    this.header = el(
      "header",
      { class: "chat-header" },
      el(
        "button",
        {
          type: "button",
          class: "icon-btn back",
          "aria-label": "Back to chats",
          onclick: () => this.shell.closeChat(),
        },
        icon("back"),
      ),
      this.identBtn,
      this.safetyBtn,
      this.infoBtn,
    );
  }

  renderHeader() {
    const app = this.app;
    const conv = this.conv;
    if (!conv || this.destroyed) return;
    const title = app.conversationTitle(conv);
    this.titleEl.textContent = title;
    const other = conv.kind === "direct" ? app.otherMember(conv) : null;
    this.avatarSlot.replaceChildren(
      avatar(title, other ? other.id : conv.id, { group: conv.kind === "group" }),
    );
    this.identBtn.setAttribute(
      "aria-label",
      conv.kind === "group" ? `${title}: group info` : `${title}: contact and security code`,
    );
    this.safetyBtn.hidden = conv.kind !== "direct";
    this.infoBtn.hidden = conv.kind !== "group";

    const typers = app.typers(this.id);
    let sub = "";
    let cls = "";
    if (typers.length) {
      cls = "typing";
      if (conv.kind === "direct") sub = "typing…";
      else {
        const names = typers.map((u) => app.userName(u));
        sub =
          names.length === 1
            ? `${names[0]} is typing…`
            : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
      }
    } else if (conv.kind === "direct" && other) {
      const p = app.presence.get(other.id);
      if (p && p.status === "online") {
        sub = "online";
        cls = "online";
      } else if (p && p.last_seen) sub = formatLastSeen(p.last_seen);
    } else if (conv.kind === "group") {
      sub = conv.left
        ? "You are no longer a member"
        : conv.members
            .map((m) => app.userName(m.id))
            .sort((a, b) => (a === "You") - (b === "You") || a.localeCompare(b))
            .join(", ");
    }
    this.subEl.textContent = sub;
    this.subEl.className = `chat-sub ${cls}`;
    this.subEl.hidden = !sub;
  }

  showInfo() {
    if (this.conv.kind === "group")
      groupInfoDialog(this.app, this.id, (userId) => safetyDialog(this.app, userId));
    else this.showSafety();
  }

  showSafety() {
    const other = this.app.otherMember(this.conv);
    if (other) safetyDialog(this.app, other.id);
  }

  // -- timeline ------------------------------------------------------------------------------

  renderMessages() {
    if (this.destroyed || !this.list) return;
    const app = this.app;
    const conv = this.conv;
    const msgs = app.messagesOf(this.id);
    const wasAtBottom = this.atBottom;
    const focusedKey = this.list.contains(document.activeElement)
      ? document.activeElement.closest("li")?.dataset.key
      : null;
    const desired = [];
    let prevDay = null;
    let prev = null;
    const fresh = new Map();
    for (const m of msgs) {
      const day = dayKey(m.time);
      if (day !== prevDay) {
        desired.push(
          this.reuse(fresh, `day:${day}`, formatDay(m.time), () =>
            el("li", { class: "day", dataset: { key: `day:${day}` } }, el("span", {}, formatDay(m.time))),
          ),
        );
        prevDay = day;
        prev = null;
      }
      const grouped = !!(
        prev &&
        prev.type === "message" &&
        m.type === "message" &&
        prev.sender === m.sender &&
        m.time - prev.time < 5 * 60000
      );
      desired.push(
        this.reuse(fresh, m.key, this.signature(m, conv, grouped), () => this.messageNode(m, conv, grouped)),
      );
      prev = m;
    }
    // Put the wanted nodes in order, reusing the unchanged ones (keeps focus and images).
    let cur = this.list.firstChild;
    for (const node of desired) {
      if (node === cur) {
        cur = cur.nextSibling;
        continue;
      }
      this.list.insertBefore(node, cur);
    }
    while (cur) {
      const next = cur.nextSibling;
      this.observer.unobserve(cur);
      this.visible.delete(cur);
      cur.remove();
      cur = next;
    }
    this.nodes = fresh;
    if (focusedKey && !this.list.contains(document.activeElement)) {
      this.list.querySelector(`li[data-key="${CSS.escape(focusedKey)}"]`)?.focus();
    }
    const last = msgs.at(-1);
    if (wasAtBottom || (last && last.mine && last.seq === null)) this.scrollToBottom();
    else if (last) this.jump.hidden = false;
  }

  reuse(fresh, key, sig, make) {
    const old = this.nodes.get(key);
    if (old && old.sig === sig) {
      fresh.set(key, old);
      return old.node;
    }
    const node = make();
    if (old) {
      this.observer.unobserve(old.node);
      this.visible.delete(old.node);
    }
    if (node.dataset.seq) this.observer.observe(node);
    fresh.set(key, { node, sig });
    return node;
  }

  signature(m, conv, grouped) {
    const app = this.app;
    const media = app.mediaState.get(m.key);
    const upload = m.client_id ? app.uploads.get(m.client_id) : undefined;
    const quoted = m.reply_to_seq ? app.findBySeq(this.id, m.reply_to_seq) : null;
    return JSON.stringify([
      m.seq,
      m.status,
      app.statusOf(m, conv),
      m.error,
      m.failReason,
      grouped,
      media && [media.state, Math.round((media.progress || 0) * 100), media.error, !!media.url],
      upload === undefined ? null : Math.round(upload * 100),
      quoted ? quoted.key : null,
      m.content && m.content.media_id,
      m.type === "event" || m.type === "notice" ? app.previewText(m, conv) : null,
      conv.kind === "group" && !m.mine ? app.userName(m.sender) : null,
    ]);
  }

  messageNode(m, conv, grouped) {
    const app = this.app;
    if (m.type === "event") {
      return el(
        "li",
        { class: "event", dataset: { key: m.key, seq: m.seq, action: m.action } },
        el("span", {}, app.eventText(m)),
      );
    }
    if (m.type === "notice") {
      return el(
        "li",
        { class: "notice", dataset: { key: m.key, notice: m.notice } },
        el(
          "span",
          {},
          icon("lock"),
          ` ${m.text} `,
          el(
            "button",
            {
              type: "button",
              class: "link-btn",
              "aria-label": `Verify ${app.userName(m.user)}’s security code`,
              onclick: () => safetyDialog(app, m.user),
            },
            "Verify",
          ),
        ),
      );
    }
    const status = app.statusOf(m, conv);
    const senderName = app.userName(m.sender, { you: false });
    const li = el("li", {
      class: `msg ${m.mine ? "out" : "in"}${grouped ? " grouped" : ""}`,
      tabindex: "-1",
      dataset: {
        key: m.key,
        seq: m.seq ?? "",
        status: status || "",
        clientId: m.client_id || "",
        messageId: m.message_id || "",
      },
    });
    if (m.seq === null || m.seq === undefined) delete li.dataset.seq;
    const bubble = el("div", { class: "bubble" });
    bubble.append(el("span", { class: "visually-hidden" }, m.mine ? "You:" : `${senderName}:`));
    if (conv.kind === "group" && !m.mine && !grouped) {
      bubble.append(
        el("span", { class: "sender", style: `--hue:${hueOf(m.sender)}`, "aria-hidden": "true" }, senderName),
      );
    }
    if (m.reply_to_seq) bubble.append(this.quoteNode(m.reply_to_seq));
    if (m.error) {
      bubble.append(
        el(
          "p",
          { class: "body undecryptable", title: m.error },
          icon("lock"),
          " This message could not be decrypted.",
        ),
      );
    } else if (m.content && m.content.type === "text") {
      bubble.append(el("p", { class: "body" }, ...linkified(m.content.text)));
    } else if (m.content && m.content.type === "media") {
      bubble.append(this.mediaNode(m));
    } else {
      bubble.append(el("p", { class: "body muted" }, "This message type is not supported here yet."));
    }
    const meta = el(
      "span",
      { class: "meta" },
      el("time", { datetime: new Date(m.time).toISOString() }, formatTime(m.time)),
      ticks(status),
    );
    bubble.append(meta);
    if (status === "failed" || status === "expired") {
      bubble.append(
        el(
          "p",
          { class: "send-error" },
          status === "failed" ? m.failReason || "Not sent." : "Not delivered.",
          " ",
          el("button", { type: "button", class: "link-btn", onclick: () => app.resend(m) }, "Send again"),
        ),
      );
    }
    li.append(
      bubble,
      m.seq
        ? el(
            "div",
            { class: "msg-actions" },
            el(
              "button",
              {
                type: "button",
                class: "icon-btn small reply-btn",
                "aria-label": `Reply to ${m.mine ? "your message" : senderName}`,
                title: "Reply",
                onclick: () => this.startReply(m),
              },
              icon("reply"),
            ),
          )
        : null,
    );
    return li;
  }

  quoteNode(seq) {
    const app = this.app;
    const q = app.findBySeq(this.id, seq);
    const who = q ? (q.mine ? "You" : app.userName(q.sender)) : "";
    const text = q
      ? app.previewText({ ...q, mine: true }, this.conv)
      : "Original message is not on this device";
    return el(
      "button",
      {
        type: "button",
        class: "quote",
        style: q ? `--hue:${hueOf(q.sender)}` : null,
        "aria-label": `Reply to ${who || "a message"}: ${text}. Show it`,
        onclick: () => this.reveal(seq),
      },
      who ? el("span", { class: "quote-who" }, who) : null,
      el("span", { class: "quote-text" }, text),
    );
  }

  mediaNode(m) {
    const app = this.app;
    const c = m.content;
    const state = app.mediaState.get(m.key);
    const upload = m.client_id ? app.uploads.get(m.client_id) : undefined;
    const isImage = (c.mime || "").startsWith("image/") && (c.thumbnail || state?.url || m.localFile);
    const wrap = el("div", { class: "media" });
    const label = `${c.name || "file"}, ${formatBytes(c.size || 0)}`;
    if (isImage) {
      let src = state?.url || null;
      if (!src && c.thumbnail) src = `data:image/jpeg;base64,${c.thumbnail}`;
      if (!src && m.localFile) {
        src = URL.createObjectURL(m.localFile);
      }
      const w = Math.min(280, c.width || 280);
      const h = c.width && c.height ? Math.round((w * c.height) / c.width) : 200;
      wrap.append(
        el(
          "button",
          {
            type: "button",
            class: `media-image${state?.url ? " full" : ""}`,
            "aria-label": `Open image ${label}`,
            onclick: () => this.openMedia(m),
          },
          el("img", {
            src,
            alt: c.caption || c.name || "image",
            width: w,
            height: Math.min(h, 360),
            loading: "lazy",
          }),
          !state?.url && !m.localFile
            ? el("span", { class: "media-overlay", "aria-hidden": "true" }, icon("download"))
            : null,
        ),
      );
    } else {
      wrap.append(
        el(
          "button",
          {
            type: "button",
            class: "media-file",
            "aria-label": `Download ${label}`,
            onclick: () => this.openMedia(m),
          },
          el("span", { class: "file-icon", "aria-hidden": "true" }, icon("file")),
          el(
            "span",
            { class: "file-info" },
            el("span", { class: "file-name" }, c.name || "file"),
            el(
              "span",
              { class: "file-size" },
              `${formatBytes(c.size || 0)} · ${(c.mime || "").split("/").pop() || "file"}`,
            ),
          ),
          el("span", { class: "file-dl", "aria-hidden": "true" }, icon("download")),
        ),
      );
    }
    if (upload !== undefined && m.seq === null) {
      const pct = Math.round(upload * 100);
      wrap.append(
        el(
          "div",
          { class: "progress" },
          el("progress", { max: 100, value: pct, "aria-label": "Uploading" }),
          el("span", { class: "progress-text" }, `Uploading… ${pct}%`),
        ),
      );
    } else if (state?.state === "downloading") {
      const pct = Math.round((state.progress || 0) * 100);
      wrap.append(
        el(
          "div",
          { class: "progress" },
          el("progress", { max: 100, value: pct, "aria-label": "Downloading" }),
          el("span", { class: "progress-text" }, `Downloading… ${pct}%`),
        ),
      );
    } else if (state?.state === "error") {
      wrap.append(el("p", { class: "media-error", role: "alert" }, icon("warn"), ` ${state.error}`));
    }
    if (c.caption) wrap.append(el("p", { class: "body caption" }, ...linkified(c.caption)));
    return wrap;
  }

  async openMedia(m) {
    const result = await this.app.openMedia(m);
    if (!result) return;
    const c = m.content;
    if ((c.mime || "").startsWith("image/")) {
      imageViewer({ url: result.url, name: c.name, caption: c.caption });
    } else {
      const a = el("a", { href: result.url, download: c.name || "file", hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
    }
  }

  reveal(seq) {
    const node = this.list.querySelector(`li[data-seq="${seq}"]`);
    if (!node) return;
    node.scrollIntoView({ block: "center", behavior: "smooth" });
    node.classList.add("flash");
    setTimeout(() => node.classList.remove("flash"), 1600);
    node.focus({ preventScroll: true });
  }

  // -- reading -------------------------------------------------------------------------------

  onIntersect(entries) {
    for (const e of entries) {
      if (e.isIntersecting) this.visible.set(e.target, Number(e.target.dataset.seq));
      else this.visible.delete(e.target);
    }
    this.checkRead();
  }

  /** Whatever is on screen in a visible tab is read; a hidden tab reads nothing. */
  checkRead() {
    if (document.visibilityState !== "visible" || this.destroyed) return;
    let max = 0;
    for (const seq of this.visible.values()) if (seq > max) max = seq;
    if (max > (this.conv?.read_seq || 0)) this.app.markRead(this.id, max);
  }

  scrollToBottom(smooth = false) {
    requestAnimationFrame(() => {
      this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: smooth ? "smooth" : "auto" });
      this.atBottom = true;
      this.jump.hidden = true;
    });
  }

  scrollToFirstUnread() {
    const conv = this.conv;
    const first = [...this.list.querySelectorAll("li[data-seq]")].find(
      (n) => Number(n.dataset.seq) > conv.read_seq && !n.classList.contains("out"),
    );
    if (first && first.previousElementSibling) {
      requestAnimationFrame(() => {
        first.scrollIntoView({ block: "start" });
        this.atBottom =
          this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 80;
        this.jump.hidden = this.atBottom;
      });
    } else this.scrollToBottom();
  }

  listKeys(e) {
    const rows = [...this.list.querySelectorAll("li.msg")];
    const current = document.activeElement.closest?.("li.msg");
    const i = rows.indexOf(current);
    if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      e.preventDefault();
      const next =
        i < 0
          ? rows.at(-1)
          : rows[Math.max(0, Math.min(rows.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)))];
      next?.focus();
    } else if ((e.key === "Enter" || e.key === "r") && current && current === document.activeElement) {
      const m = this.app.messages.get(this.id)?.get(current.dataset.key);
      if (m && m.seq) {
        e.preventDefault();
        this.startReply(m);
      }
    } else if (e.key === "Escape") {
      this.input.focus();
    }
  }

  // -- composer ------------------------------------------------------------------------------

  buildComposer() {
    this.input = el("textarea", {
      id: "composer-input",
      rows: 1,
      placeholder: "Message",
      enterkeyhint: "send",
      autocomplete: "off",
      "aria-describedby": "composer-help",
    });
    this.fileInput = el("input", {
      type: "file",
      hidden: true,
      multiple: true,
      id: "file-input",
      tabindex: "-1",
    });
    this.replyBar = el("div", { class: "reply-bar", hidden: true });
    this.form = el(
      "form",
      { class: "composer", "aria-label": "Write a message" },
      el(
        "button",
        {
          type: "button",
          class: "icon-btn",
          id: "attach-btn",
          "aria-label": "Attach a photo or file",
          title: "Attach",
          onclick: () => this.fileInput.click(),
        },
        icon("attach"),
      ),
      this.fileInput,
      el("label", { for: "composer-input", class: "visually-hidden" }, "Message"),
      this.input,
      el("button", { type: "submit", class: "send-btn", id: "send-btn", "aria-label": "Send" }, icon("send")),
    );
    this.leftNote = el(
      "p",
      { class: "left-note", hidden: true },
      "You are no longer a member of this group.",
    );
    this.composerWrap = el(
      "div",
      { class: "composer-wrap" },
      this.replyBar,
      this.form,
      this.leftNote,
      el(
        "p",
        { id: "composer-help", class: "visually-hidden" },
        "Enter sends, Shift+Enter starts a new line, Escape cancels a reply.",
      ),
    );
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      } else if (e.key === "Escape" && this.replyTo) {
        e.preventDefault();
        e.stopPropagation();
        this.cancelReply();
      } else if (e.key === "ArrowUp" && !this.input.value) {
        const rows = this.list.querySelectorAll("li.msg");
        if (rows.length) {
          e.preventDefault();
          rows[rows.length - 1].focus();
        }
      }
    });
    this.input.addEventListener("input", () => {
      this.autosize();
      this.app.typingInput(this.id, this.input.value.trim().length > 0);
    });
    this.input.addEventListener("paste", (e) => {
      const files = [...(e.clipboardData?.files || [])];
      if (files.length) {
        e.preventDefault();
        for (const f of files) this.sendFile(f);
      }
    });
    this.fileInput.addEventListener("change", () => {
      for (const f of this.fileInput.files) this.sendFile(f);
      this.fileInput.value = "";
    });
  }

  renderComposerState() {
    const left = !!this.conv?.left;
    this.form.hidden = left;
    this.leftNote.hidden = !left;
    if (left) this.cancelReply();
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, 160)}px`;
  }

  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    const reply = this.replyTo;
    this.input.value = "";
    this.autosize();
    this.cancelReply();
    this.app.typingStop();
    await this.app.sendText(this.id, text, reply ? reply.seq : null);
    this.scrollToBottom();
    this.input.focus();
  }

  async sendFile(file) {
    const caption = this.input.value.trim();
    const reply = this.replyTo;
    this.input.value = "";
    this.autosize();
    this.cancelReply();
    await this.app.sendFile(this.id, file, caption, reply ? reply.seq : null);
    this.scrollToBottom();
  }

  startReply(m) {
    const app = this.app;
    this.replyTo = m;
    const who = m.mine ? "yourself" : app.userName(m.sender);
    this.replyBar.replaceChildren(
      el(
        "div",
        { class: "reply-bar-text", style: `--hue:${hueOf(m.sender)}` },
        el("strong", {}, `Replying to ${who}`),
        el("span", {}, app.previewText({ ...m, mine: true }, this.conv)),
      ),
      el(
        "button",
        {
          type: "button",
          class: "icon-btn small",
          "aria-label": "Cancel reply",
          onclick: () => this.cancelReply(true),
        },
        icon("close"),
      ),
    );
    this.replyBar.hidden = false;
    this.input.focus();
  }

  cancelReply(focus = false) {
    this.replyTo = null;
    if (this.replyBar) {
      this.replyBar.hidden = true;
      this.replyBar.replaceChildren();
    }
    if (focus) this.input.focus();
  }
}
