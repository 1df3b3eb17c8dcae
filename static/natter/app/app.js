// The Natter web client: boots the device, keeps state, and connects the pieces.
// Protocol: docs/protocol.md. Crypto: docs/crypto.md (via e2e.js). History lives
// in IndexedDB (store.js) because the server deletes what it delivered.

import { fromBase64, toBase64 } from "../crypto/index.js";
import { ApiError, NetworkError, api, downloadMedia, get, post, seg, uploadMedia } from "./api.js";
import { EndToEnd, KeyStore } from "./e2e.js";
import { MediaError, decryptBlob, encryptFile, makeThumbnail } from "./media.js";
import { Store } from "./store.js";
import { Transport } from "./transport.js";
import { renderAuth } from "./ui/auth.js";
import { Shell } from "./ui/shell.js";
import { backoffDelay, debounce, el, icon, uuid4 } from "./util.js";

const TYPING_EXPIRES_MS = 10000; // receivers drop "composing" after 10 s (§7b)
const TYPING_RESEND_MS = 5000; // senders repeat "composing" every 5 s or so
const TYPING_IDLE_MS = 4000; // and say "paused" once the keys rest this long
export const EXPIRED_MEDIA_TEXT = "download failed — ask the sender to resend";

// Errors after which a send is given up and shown as failed (retrying cannot help).
const PERMANENT = new Set([
  "bad_request",
  "not_member",
  "too_large",
  "forbidden",
  "not_found",
  "http_404", // a server without the media API answers Django's plain 404
  "http_413",
]);

function orderKey(m) {
  return m.seq ?? m.anchor ?? Number.POSITIVE_INFINITY;
}

export function sortMessages(list) {
  return list.sort((a, b) => orderKey(a) - orderKey(b) || a.time - b.time);
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua)
    ? "Edge"
    : /Firefox\//.test(ua)
      ? "Firefox"
      : /Chrom(e|ium)\//.test(ua)
        ? "Chrome"
        : /Safari\//.test(ua)
          ? "Safari"
          : "Browser";
  const os = /Android/.test(ua)
    ? "Android"
    : /iPhone|iPad/.test(ua)
      ? "iOS"
      : /Mac OS X/.test(ua)
        ? "macOS"
        : /Windows/.test(ua)
          ? "Windows"
          : /Linux/.test(ua)
            ? "Linux"
            : "";
  return `Web · ${browser}${os ? ` on ${os}` : ""}`;
}

export class App extends EventTarget {
  constructor(root) {
    super();
    this.root = root;
    this.params = new URLSearchParams(location.search);
    this.store = null;
    this.account = null;
    this.keystore = null;
    this.e2e = null;
    this.transport = null;
    this.conversations = new Map();
    this.users = new Map();
    this.messages = new Map(); // conversation -> Map(key -> message), for conversations opened
    this.presence = new Map(); // user -> {status, last_seen}
    this.typing = new Map(); // conversation -> Map(user -> timer)
    this.uploads = new Map(); // client_id -> progress 0..1
    this.mediaState = new Map(); // message key -> {state, progress, error, url}
    this.connection = { status: "stopped", kind: "ws", fellBack: false };
    this.flushing = false;
    this.flushAgain = false;
    this.flushTimer = null;
    this.flushAttempt = 0;
    this.typingState = { conversation: null, sentAt: 0, idle: null };
    this.channel = "BroadcastChannel" in window ? new BroadcastChannel("natter") : null;
    if (this.channel) {
      this.channel.onmessage = (e) => {
        if (e.data === "reload") location.reload();
        else if (e.data && e.data.type === "take-over" && e.data.device === this.account?.device?.id)
          this.yieldTab();
      };
    }
    this.releaseTab = null;
    this.refreshConversationsSoon = debounce(() => this.refreshConversations().catch(() => {}), 300);
    this.flushReadsSoon = debounce(() => this.flushReads(), 250);
    this.groupRefreshes = new Map();
  }

  emit(type, detail = null) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  get me() {
    return this.account?.user;
  }

  // -- boot, log in, log out -----------------------------------------------------------------

  async boot() {
    this.store = await Store.open();
    this.account = await this.store.get("kv", "account");
    if (!this.account) {
      this.showAuth();
      return;
    }
    try {
      const me = await get("/api/v1/me");
      if (me.id !== this.account.user.id) throw new ApiError(401, "unauthorized", "another user");
      this.account.user = { ...this.account.user, ...me };
    } catch (err) {
      if (!(err instanceof NetworkError)) {
        // The session ended (logged out elsewhere, device revoked): this device is gone.
        await this.wipe();
        this.showAuth("You were logged out. Log in again to continue.");
        return;
      }
      // Offline: show the history we have; the transport connects when it can.
    }
    await this.startMain();
  }

  showAuth(message = null) {
    renderAuth(this.root, {
      message,
      onLogin: (username, password) => this.login(username, password),
      onRegister: async (username, displayName, password) => {
        await post("/api/v1/auth/register", { username, password, display_name: displayName || username });
        await this.login(username, password);
      },
    });
  }

  async login(username, password) {
    const answer = await post("/api/v1/auth/login", {
      username,
      password,
      device_name: deviceName(),
      session: true,
    });
    // A new device: whatever an earlier device left in this browser is not ours.
    await this.wipe();
    this.store = await Store.open();
    this.account = { user: answer.user, device: answer.device };
    this.keystore = new KeyStore();
    this.keystore.account = { user: answer.user, device: answer.device };
    await this.store.put("kv", this.account, "account");
    await this.startMain();
    this.channel?.postMessage("reload"); // other tabs of the old device must start over
  }

  async logout() {
    this.gone = true; // the socket's 4401 that follows is expected, not news
    try {
      await post("/api/v1/auth/logout");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) {
        this.gone = false;
        if (err instanceof NetworkError)
          throw new Error("You are offline: log out once the connection is back.");
        throw err;
      }
    }
    this.transport?.stop();
    await this.wipe();
    this.channel?.postMessage("reload");
    location.replace("/");
  }

  async wipe() {
    this.transport?.stop();
    if (this.releaseTab) {
      this.releaseTab();
      this.releaseTab = null;
    }
    await Store.destroy(this.store);
    this.store = null;
    this.keystore = null;
    for (const m of [this.conversations, this.users, this.messages, this.presence, this.uploads]) m.clear();
    this.mediaState.clear();
  }

  /** The session or device is gone (4401, 401): say so and offer the login form. */
  async unauthorized() {
    if (this.gone) return;
    this.gone = true;
    this.transport?.stop();
    await this.wipe();
    this.shell?.destroy();
    this.showAuth("This device was logged out. Log in again to continue.");
  }

  // -- one tab at a time ----------------------------------------------------------------------
  // Two tabs of one device would each hold a copy of the ratchet state and could
  // reuse message keys (and their sockets would push each other off, 4409). A Web
  // Lock keeps a second tab waiting until the user moves Natter to it.

  lockName() {
    return `natter-device-${this.account.device.id}`;
  }

  async acquireTab(wait = false) {
    if (!navigator.locks) return true; // not a secure context: the 4409 banner still guards
    return new Promise((resolve) => {
      navigator.locks
        .request(this.lockName(), wait ? {} : { ifAvailable: true }, (lock) => {
          if (!lock) return resolve(false);
          resolve(true);
          return new Promise((release) => (this.releaseTab = release));
        })
        .catch(() => resolve(true));
    });
  }

  /** Another tab asked for the device: finish what is running, let go, say so. */
  async yieldTab() {
    if (!this.releaseTab) return;
    this.transport?.stop();
    await this.e2e?.locked(async () => {});
    const release = this.releaseTab;
    this.releaseTab = null;
    release();
    // This tab's copy of the state is stale from now on: show nothing that could write it.
    this.shell?.destroy();
    this.shell = null;
    document.body.dataset.connection = "conflict";
    this.tabScreen(() => this.takeOver());
  }

  /** "Use here" on the banner of a tab that gave Natter away: take it back. */
  async takeOver() {
    this.channel?.postMessage({ type: "take-over", device: this.account.device.id });
    await this.acquireTab(true);
    location.reload(); // start clean, from the state the other tab stored
  }

  /** "Natter is open in another tab" with a "Use here" button. */
  tabScreen(onUse) {
    const button = el("button", { class: "primary", type: "button" }, "Use here");
    button.addEventListener("click", () => {
      button.disabled = true;
      button.textContent = "Moving here…";
      onUse();
    });
    this.root.replaceChildren(
      el(
        "main",
        { class: "splash", id: "main" },
        el("div", { class: "brand-mark big", "aria-hidden": "true" }, icon("chat")),
        el("p", { role: "status" }, "Natter is open in another tab or window of this browser."),
        button,
      ),
    );
    button.focus();
  }

  waitForTab() {
    return new Promise((resolve) =>
      this.tabScreen(async () => {
        this.channel?.postMessage({ type: "take-over", device: this.account.device.id });
        resolve(await this.acquireTab(true));
      }),
    );
  }

  async startMain() {
    this.gone = false;
    if (!(await this.acquireTab())) await this.waitForTab();
    if (!this.keystore) this.keystore = KeyStore.fromJSON(await this.store.get("kv", "keystore"));
    this.e2e = new EndToEnd({
      store: this.keystore,
      userId: this.account.user.id,
      deviceId: this.account.device.id,
      persist: (extra = []) => this.persist(extra),
      onIdentityChange: (userId) => this.addIdentityNotice(userId),
    });
    for (const c of await this.store.getAll("conversations")) this.conversations.set(c.id, c);
    for (const u of await this.store.getAll("users")) this.users.set(u.id, u);
    this.users.set(this.me.id, this.me);

    this.shell = new Shell(this.root, this);
    this.transport = new Transport({
      mode: this.params.get("transport") === "longpoll" ? "longpoll" : "auto",
      onEvent: (event, cursor) => this.handleEvent(event, cursor),
      onEphemeral: (frame) => this.handleEphemeral(frame),
      onStatus: (s) => {
        this.connection = s;
        document.body.dataset.connection = s.status;
        document.body.dataset.transport = s.kind;
        this.emit("connection");
      },
      onHello: (hello) => {
        if (hello.device !== this.account.device.id) location.reload(); // another tab logged in anew
      },
      onConnected: () => this.onConnected(),
      onUnauthorized: () => this.unauthorized(),
    });
    if (!this.keystore.identity || !this.account.published) await this.publishKeys();
    this.transport.start();
  }

  async publishKeys() {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.e2e.publish();
        this.account.published = true;
        await this.store.put("kv", this.account, "account");
        return;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return this.unauthorized();
        console.warn("natter: publishing keys failed, retrying", err);
        await new Promise((r) => setTimeout(r, backoffDelay(attempt)));
      }
    }
  }

  persist(extra = []) {
    return this.store.write([["kv", this.keystore.toJSON(), "keystore"], ...extra]);
  }

  async onConnected() {
    await this.refreshConversations().catch((err) => console.warn("natter: conversations", err));
    this.flushOutbox();
    this.flushReads();
    this.updatePresenceSubscription();
  }

  // -- names ---------------------------------------------------------------------------------

  userName(userId, { you = true } = {}) {
    if (userId === this.me.id) return you ? "You" : this.me.display_name || this.me.username;
    const u = this.users.get(userId);
    return (u && (u.display_name || u.username)) || "Someone";
  }

  rememberUsers(list) {
    const writes = [];
    for (const u of list || []) {
      if (!u || !u.id) continue;
      const old = this.users.get(u.id);
      if (old && old.username === u.username && old.display_name === u.display_name) continue;
      this.users.set(u.id, { id: u.id, username: u.username, display_name: u.display_name });
      writes.push(["users", this.users.get(u.id)]);
    }
    return writes;
  }

  // -- conversations -------------------------------------------------------------------------

  newConversation(id, kind = "direct") {
    return {
      id,
      kind,
      title: "",
      members: [],
      admins: [],
      last_seq: 0,
      read_seq: 0,
      readDirty: false,
      receipts: {}, // user -> {delivered, read}: the watermarks of §6
      expired: {}, // seq -> [users it expired for]
      joined: {}, // user -> seq of the group event that added them
      left: false,
      last: null, // the preview of the chat list
      lastTime: 0,
      serverIndex: 1e9,
    };
  }

  conversationTitle(conv) {
    if (conv.kind === "direct" && !conv.title) {
      const other = conv.members.find((m) => m.id !== this.me.id);
      return other ? other.display_name || other.username : "New chat";
    }
    return conv.title || (conv.kind === "group" ? "Group" : "Chat");
  }

  otherMember(conv) {
    return conv.members.find((m) => m.id !== this.me.id) || null;
  }

  sortedConversations() {
    return [...this.conversations.values()].sort(
      (a, b) => (b.lastTime || 0) - (a.lastTime || 0) || a.serverIndex - b.serverIndex,
    );
  }

  unread(conv) {
    return Math.max(0, conv.last_seq - conv.read_seq);
  }

  async refreshConversations() {
    const list = await get("/api/v1/conversations");
    const writes = [];
    const current = new Set();
    list.forEach((c, i) => {
      current.add(c.id);
      const conv = this.conversations.get(c.id) || this.newConversation(c.id, c.kind);
      if (c.last_seq >= conv.last_seq) {
        // Only a list at least as new as the events already applied may say who is in.
        conv.kind = c.kind;
        conv.title = c.title;
        conv.members = c.members;
        conv.left = false;
      }
      conv.last_seq = Math.max(conv.last_seq, c.last_seq);
      conv.read_seq = Math.max(conv.read_seq, c.read_seq);
      conv.serverIndex = i;
      this.conversations.set(c.id, conv);
      writes.push(["conversations", conv], ...this.rememberUsers(c.members));
    });
    for (const conv of this.conversations.values()) {
      if (!current.has(conv.id) && conv.kind === "group" && !conv.left) {
        conv.left = true; // removed while away: keep the history, close the composer
        writes.push(["conversations", conv]);
      }
    }
    await this.store.write(writes);
    this.emit("conversations");
    this.emit("messages", null);
    this.updatePresenceSubscription();
  }

  /** Members and admins of a group, after a change (debounced per group). */
  refreshGroupSoon(id) {
    clearTimeout(this.groupRefreshes.get(id));
    this.groupRefreshes.set(
      id,
      setTimeout(() => this.refreshGroup(id).catch(() => {}), 200),
    );
  }

  async refreshGroup(id) {
    const conv = this.conversations.get(id);
    if (!conv) return;
    let g;
    try {
      g = await get(`/api/v1/groups/${seg(id)}`);
    } catch (err) {
      if (err instanceof ApiError && err.code === "not_member") {
        conv.left = true;
        await this.store.put("conversations", conv);
        this.emit("conversations");
        this.emit("group", id);
      }
      throw err;
    }
    if (g.last_seq < conv.last_seq) {
      // The answer was read before a change we have already applied (a removal that
      // crossed this request, say): it must not undo that change.
      if (!conv.left) this.refreshGroupSoon(id);
      return conv;
    }
    this.applyGroup(conv, g);
    await this.store.write([["conversations", conv], ...this.rememberUsers(g.members)]);
    this.emit("conversations");
    this.emit("group", id);
    this.updatePresenceSubscription();
    return conv;
  }

  applyGroup(conv, g) {
    conv.kind = "group";
    conv.title = g.title;
    conv.members = g.members;
    conv.admins = g.admins || [];
    conv.last_seq = Math.max(conv.last_seq, g.last_seq);
    conv.read_seq = Math.max(conv.read_seq, g.read_seq);
    conv.left = false;
  }

  /** Open (or create) the direct conversation with the user of exactly this username. */
  async startDirect(username) {
    const user = await get(`/api/v1/users?handle=${encodeURIComponent(username.trim().replace(/^@/, ""))}`);
    if (user.id === this.me.id) throw new Error("That is you. Pick someone else.");
    const c = await post("/api/v1/conversations/direct", { user_id: user.id });
    const conv = this.conversations.get(c.id) || this.newConversation(c.id, "direct");
    Object.assign(conv, { kind: c.kind, title: c.title, members: c.members, left: false });
    conv.last_seq = Math.max(conv.last_seq, c.last_seq);
    conv.read_seq = Math.max(conv.read_seq, c.read_seq);
    if (!conv.lastTime) conv.lastTime = Date.now();
    this.conversations.set(conv.id, conv);
    await this.store.write([["conversations", conv], ...this.rememberUsers(c.members)]);
    this.emit("conversations");
    return conv.id;
  }

  /** Look users up by exact username (no search exists, by design). */
  lookupUser(username) {
    return get(`/api/v1/users?handle=${encodeURIComponent(username.trim().replace(/^@/, ""))}`);
  }

  async createGroup(title, memberIds) {
    const g = await post("/api/v1/groups", { title, member_ids: memberIds });
    const conv = this.conversations.get(g.id) || this.newConversation(g.id, "group");
    this.applyGroup(conv, g);
    conv.lastTime = Date.now();
    this.conversations.set(conv.id, conv);
    await this.store.write([["conversations", conv], ...this.rememberUsers(g.members)]);
    this.emit("conversations");
    return conv.id;
  }

  async groupAction(id, action, arg = null) {
    const base = `/api/v1/groups/${seg(id)}`;
    if (action === "add") await post(`${base}/members`, { user_ids: arg });
    else if (action === "remove") await api("DELETE", `${base}/members/${seg(arg)}`);
    else if (action === "promote") await post(`${base}/admins`, { user_id: arg });
    else if (action === "rename") await api("PATCH", base, { title: arg });
    else if (action === "leave") await post(`${base}/leave`);
    if (action === "leave") {
      const conv = this.conversations.get(id);
      conv.left = true;
      await this.store.put("conversations", conv);
      this.emit("conversations");
      this.emit("group", id);
      return;
    }
    await this.refreshGroup(id);
  }

  // -- messages in memory --------------------------------------------------------------------

  async loadMessages(conversation) {
    if (!this.messages.has(conversation)) {
      const map = new Map();
      for (const m of await this.store.byConversation(conversation)) map.set(m.key, m);
      this.messages.set(conversation, map);
    }
    return this.messages.get(conversation);
  }

  messagesOf(conversation) {
    return sortMessages([...(this.messages.get(conversation)?.values() || [])]);
  }

  cache(msg) {
    this.messages.get(msg.conversation)?.set(msg.key, msg);
  }

  findBySeq(conversation, seq) {
    for (const m of this.messages.get(conversation)?.values() || []) if (m.seq === seq) return m;
    return null;
  }

  setLast(conv, msg) {
    const cur = conv.last;
    // The chat list shows the newest: by seq, and a pending message after everything.
    if (cur && cur.key !== msg.key && orderKey(cur) > orderKey(msg)) return;
    // What the chat list needs to say it (names are looked up when it is drawn).
    const c = msg.content || null;
    conv.last = {
      key: msg.key,
      seq: msg.seq ?? null,
      anchor: msg.anchor ?? null,
      mine: !!msg.mine,
      sender: msg.sender || null,
      status: msg.status || null,
      type: msg.type,
      error: msg.error || null,
      content: c && { type: c.type, text: c.text, mime: c.mime, name: c.name, caption: c.caption },
      action: msg.action,
      actor: msg.actor,
      user_ids: msg.user_ids,
      title: msg.title,
      text: msg.text,
      icon: msg.error
        ? "lock"
        : c?.type === "media"
          ? (c.mime || "").startsWith("image/")
            ? "photo"
            : "file"
          : null,
    };
    conv.lastTime = Math.max(conv.lastTime || 0, msg.time || 0);
  }

  previewText(msg, conv) {
    if (msg.type === "event") return this.eventText(msg);
    if (msg.type === "notice") return msg.text;
    if (msg.error) return "Message could not be decrypted";
    const c = msg.content || {};
    let text;
    if (c.type === "text") text = c.text;
    else if (c.type === "media") {
      text = c.caption || (c.mime && c.mime.startsWith("image/") ? "Photo" : c.name || "File");
    } else text = "Unsupported message";
    if (conv.kind === "group" && !msg.mine) text = `${this.userName(msg.sender)}: ${text}`;
    return text;
  }

  eventText(ev) {
    const me = this.me.id;
    const who = (u, first) => (u === me ? (first ? "You" : "you") : this.userName(u));
    const ids = ev.user_ids || [];
    const names = ids.map((u) => who(u, false)).join(", ");
    const subject = ids.map((u, i) => who(u, i === 0)).join(", ");
    const actor = ev.actor ? who(ev.actor, true) : null;
    switch (ev.action) {
      case "created":
        return `${actor || "Someone"} created the group “${ev.title}”`;
      case "added":
        return `${actor || "An admin"} added ${names}`;
      case "removed":
        return `${actor || "An admin"} removed ${names}`;
      case "left":
        return `${subject} left`;
      case "promoted":
        if (actor) return `${actor} made ${names} ${ids.length > 1 ? "admins" : "an admin"}`;
        if (ids.length > 1) return `${subject} are now admins`;
        return `${subject} ${ids[0] === me ? "are" : "is"} now an admin`;
      case "renamed":
        return `${actor || "An admin"} renamed the group to “${ev.title}”`;
      default:
        return "The group changed";
    }
  }

  /** Who a message of ours at `seq` was for: the other members who were there then. */
  recipientsAt(conv, seq) {
    return conv.members
      .map((m) => m.id)
      .filter((u) => u !== this.me.id && !(conv.joined[u] !== undefined && conv.joined[u] >= seq));
  }

  /** pending (clock) · sent ✓ · delivered ✓✓ · read (blue ✓✓) · expired · failed. */
  statusOf(msg, conv) {
    if (!msg.mine || (msg.type && msg.type !== "message")) return null;
    if (msg.status === "failed") return "failed";
    if (msg.seq === null || msg.seq === undefined) return "pending";
    if (conv.expired?.[msg.seq]?.length) return "expired";
    const others = this.recipientsAt(conv, msg.seq);
    if (!others.length) return "sent";
    const r = conv.receipts || {};
    if (others.every((u) => (r[u]?.read || 0) >= msg.seq)) return "read";
    if (others.every((u) => Math.max(r[u]?.delivered || 0, r[u]?.read || 0) >= msg.seq)) {
      return "delivered";
    }
    return "sent";
  }

  // -- inbox events --------------------------------------------------------------------------

  /** One inbox event: decrypt, store with the ratchet state, then show. Resolves before the ack. */
  handleEvent(event) {
    return this.e2e.locked(async () => {
      if (
        (event.type === "message" || event.type === "group") &&
        !this.conversations.has(event.conversation)
      ) {
        // Someone started a chat with us: learn its members' names before we show it.
        await this.refreshConversations().catch(() => {});
      }
      const res = await this.e2e.open(event);
      const writes = [];
      const after = [];
      if (event.type === "message" && res) this.onMessage(res, writes, after);
      else if (event.type === "receipt") this.onReceipt(event, writes, after);
      else if (event.type === "group") this.onGroupEvent(event, writes, after);
      else if (event.type === "device") this.onDeviceEvent(event, writes, after);
      await this.persist(writes);
      for (const fn of after) fn();
    });
  }

  ensureConversation(id, kind, writes) {
    let conv = this.conversations.get(id);
    if (!conv) {
      // Somebody started a chat with us: show it now, fetch its details.
      conv = this.newConversation(id, kind);
      this.conversations.set(id, conv);
      this.refreshConversationsSoon();
    }
    writes.push(["conversations", conv]);
    return conv;
  }

  onMessage(res, writes, after) {
    const ev = res.event;
    const conv = this.ensureConversation(
      ev.conversation,
      ev.envelope === "group" || ev.group_body ? "group" : "direct",
      writes,
    );
    conv.last_seq = Math.max(conv.last_seq, ev.seq);
    const mine = ev.sender.user === this.me.id;
    if (res.content && res.content.type === "sender_key") return; // a key hand-over alone: nothing to show
    const msg = {
      key: ev.message_id,
      conversation: ev.conversation,
      seq: ev.seq,
      message_id: ev.message_id,
      client_id: ev.client_id,
      sender: ev.sender.user,
      senderDevice: ev.sender.device,
      mine,
      type: "message",
      kind: ev.kind,
      content: res.content,
      error: res.error,
      reply_to_seq: ev.reply_to_seq ?? null,
      time: Date.parse(ev.sent_at) || Date.now(),
      status: mine ? "sent" : null,
    };
    if (mine) conv.read_seq = Math.max(conv.read_seq, ev.seq); // we wrote it on another device
    this.setLast(conv, msg);
    writes.push(["messages", msg]);
    after.push(() => {
      this.cache(msg);
      this.clearTyping(ev.conversation, ev.sender.user);
      this.emit("conversations");
      this.emit("messages", ev.conversation);
      if (!mine) {
        const where = conv.kind === "group" ? ` in ${this.conversationTitle(conv)}` : "";
        const what = this.previewText({ ...msg, sender: null, mine: true }, conv);
        this.announce(`${this.userName(msg.sender)}${where}: ${what}`);
      }
    });
  }

  onReceipt(ev, writes, after) {
    const conv = this.conversations.get(ev.conversation);
    if (!conv) return;
    const r = (conv.receipts[ev.by_user] ||= { delivered: 0, read: 0 });
    if (ev.status === "delivered") r.delivered = Math.max(r.delivered, ev.up_to_seq);
    else if (ev.status === "read") {
      r.read = Math.max(r.read, ev.up_to_seq);
      r.delivered = Math.max(r.delivered, ev.up_to_seq);
    } else if (ev.status === "expired") {
      for (const s of ev.seqs || [ev.up_to_seq]) {
        const list = (conv.expired[s] ||= []);
        if (!list.includes(ev.by_user)) list.push(ev.by_user);
      }
    }
    writes.push(["conversations", conv]);
    after.push(() => {
      this.emit("conversations");
      this.emit("messages", ev.conversation);
    });
  }

  onGroupEvent(ev, writes, after) {
    const conv = this.ensureConversation(ev.conversation, "group", writes);
    conv.kind = "group";
    if (ev.title) conv.title = ev.title;
    conv.last_seq = Math.max(conv.last_seq, ev.seq);
    const ids = ev.user_ids || [];
    const member = (id) => this.users.get(id) || { id, username: "", display_name: "" };
    const addMembers = () => {
      for (const id of ids) {
        conv.joined[id] = ev.seq;
        if (!conv.members.some((m) => m.id === id)) conv.members.push(member(id));
      }
    };
    if (ev.action === "created") {
      addMembers();
      if (ev.actor) conv.admins = [ev.actor];
    } else if (ev.action === "added") {
      addMembers();
    } else if (ev.action === "removed" || ev.action === "left") {
      conv.members = conv.members.filter((m) => !ids.includes(m.id));
      conv.admins = (conv.admins || []).filter((a) => !ids.includes(a));
    } else if (ev.action === "promoted") {
      conv.admins = [...new Set([...(conv.admins || []), ...ids])];
    }
    if (ids.includes(this.me.id)) conv.left = ev.action === "removed" || ev.action === "left";
    if (conv.left) clearTimeout(this.groupRefreshes.get(ev.conversation));
    const record = {
      key: `ev:${ev.conversation}:${ev.seq}`,
      conversation: ev.conversation,
      seq: ev.seq,
      type: "event",
      action: ev.action,
      actor: ev.actor,
      user_ids: ids,
      title: ev.title,
      time: Date.now(),
    };
    this.setLast(conv, record);
    writes.push(["messages", record]);
    after.push(() => {
      this.cache(record);
      this.emit("conversations");
      this.emit("messages", ev.conversation);
      this.emit("group", ev.conversation);
      if (!conv.left) this.refreshGroupSoon(ev.conversation);
      this.updatePresenceSubscription();
    });
  }

  onDeviceEvent(ev, writes, after) {
    if (ev.action !== "identity_changed" || ev.user === this.me.id) return;
    const records = this.identityNotices(ev.user);
    for (const r of records) writes.push(["messages", r]);
    for (const conv of this.conversations.values()) {
      if (records.some((r) => r.conversation === conv.id)) writes.push(["conversations", conv]);
    }
    after.push(() => {
      for (const r of records) this.cache(r);
      this.emit("conversations");
      this.emit("messages", null);
      this.emit("identity", ev.user);
    });
  }

  /** "Bob's security code changed" in every chat we share with Bob. */
  identityNotices(userId) {
    const out = [];
    for (const conv of this.conversations.values()) {
      if (!conv.members.some((m) => m.id === userId)) continue;
      const record = {
        key: `notice:${userId}:${conv.id}:${Date.now()}`,
        conversation: conv.id,
        seq: null,
        anchor: conv.last_seq + 0.5,
        type: "notice",
        notice: "identity",
        user: userId,
        text: `${this.userName(userId)}’s security code changed.`,
        time: Date.now(),
      };
      conv.identityChanged = { ...(conv.identityChanged || {}), [userId]: Date.now() };
      this.setLast(conv, record);
      out.push(record);
    }
    return out;
  }

  async addIdentityNotice(userId) {
    const records = this.identityNotices(userId);
    const convs = [...this.conversations.values()].filter((c) =>
      records.some((r) => r.conversation === c.id),
    );
    await this.store.write([
      ...records.map((r) => ["messages", r]),
      ...convs.map((c) => ["conversations", c]),
    ]);
    for (const r of records) this.cache(r);
    this.emit("conversations");
    this.emit("messages", null);
    this.emit("identity", userId);
  }

  // -- presence and typing -------------------------------------------------------------------

  handleEphemeral(frame) {
    if (frame.type === "presence") {
      this.presence.set(frame.user, { status: frame.status, last_seen: frame.last_seen });
      this.emit("presence", frame.user);
    } else if (frame.type === "typing") {
      if (frame.user === this.me.id) return;
      if (frame.state === "composing") {
        const per = this.typing.get(frame.conversation) || new Map();
        clearTimeout(per.get(frame.user));
        per.set(
          frame.user,
          setTimeout(() => this.clearTyping(frame.conversation, frame.user), TYPING_EXPIRES_MS),
        );
        this.typing.set(frame.conversation, per);
        this.emit("typing", frame.conversation);
      } else {
        this.clearTyping(frame.conversation, frame.user);
      }
    }
  }

  clearTyping(conversation, user) {
    const per = this.typing.get(conversation);
    if (!per || !per.has(user)) return;
    clearTimeout(per.get(user));
    per.delete(user);
    this.emit("typing", conversation);
  }

  typers(conversation) {
    return [...(this.typing.get(conversation)?.keys() || [])];
  }

  /** Watch the people of the chat on screen, not everybody we know (§7b). */
  updatePresenceSubscription() {
    const conv = this.conversations.get(this.openId);
    const ids = conv ? conv.members.map((m) => m.id).filter((u) => u !== this.me.id) : [];
    this.transport?.setPresence(ids);
  }

  /** The composer's text changed: composing now and every 5 s, paused when it rests or clears. */
  typingInput(conversation, hasText) {
    const t = this.typingState;
    clearTimeout(t.idle);
    if (!hasText) {
      this.typingStop();
      return;
    }
    if (t.conversation && t.conversation !== conversation) this.typingStop();
    const now = Date.now();
    if (t.conversation !== conversation || now - t.sentAt > TYPING_RESEND_MS) {
      this.transport.typing(conversation, "composing");
      t.conversation = conversation;
      t.sentAt = now;
    }
    t.idle = setTimeout(() => this.typingStop(), TYPING_IDLE_MS);
  }

  typingStop() {
    const t = this.typingState;
    clearTimeout(t.idle);
    if (t.conversation) this.transport.typing(t.conversation, "paused");
    t.conversation = null;
    t.sentAt = 0;
  }

  // -- reading -------------------------------------------------------------------------------

  /** The chat is on screen up to `seq`: move the read pointer (never from a hidden tab). */
  async markRead(conversation, seq) {
    if (document.visibilityState !== "visible") return;
    const conv = this.conversations.get(conversation);
    if (!conv || seq <= conv.read_seq) return;
    conv.read_seq = Math.min(seq, Math.max(conv.last_seq, seq));
    conv.readDirty = true;
    await this.store.put("conversations", conv);
    this.emit("conversations");
    this.flushReadsSoon();
  }

  /** Tell the server every read pointer that moved; one pass at a time, again if asked meanwhile. */
  async flushReads() {
    if (this.readsFlushing) {
      this.readsAgain = true;
      return;
    }
    this.readsFlushing = true;
    try {
      do {
        this.readsAgain = false;
        if (!this.transport?.online) return;
        for (const conv of this.conversations.values()) {
          if (!conv.readDirty || conv.left) continue;
          const seq = conv.read_seq;
          try {
            await this.transport.read(conv.id, seq);
          } catch (err) {
            if (!(err instanceof ApiError && PERMANENT.has(err.code))) {
              setTimeout(() => this.flushReadsSoon(), 2000); // try again; the pointer only moves forward
              continue;
            }
          }
          // Only what was sent is done: a pointer that moved meanwhile goes next time.
          if (conv.read_seq === seq) {
            conv.readDirty = false;
            await this.store.put("conversations", conv);
          } else this.readsAgain = true;
        }
      } while (this.readsAgain);
    } finally {
      this.readsFlushing = false;
    }
  }

  // -- sending -------------------------------------------------------------------------------

  async sendText(conversation, text, replyToSeq = null) {
    return this.queueMessage(conversation, "text", { type: "text", text }, replyToSeq);
  }

  async sendFile(conversation, file, caption = "", replyToSeq = null) {
    const thumb = await makeThumbnail(file);
    const content = {
      type: "media",
      mime: file.type || "application/octet-stream",
      name: file.name || "file",
      size: file.size,
    };
    if (thumb) {
      if (thumb.thumbnail) content.thumbnail = thumb.thumbnail;
      content.width = thumb.width;
      content.height = thumb.height;
    }
    if (caption) content.caption = caption;
    return this.queueMessage(conversation, "media", content, replyToSeq, file);
  }

  /** Into the outbox and on screen at once (a clock); sent when the connection allows. */
  async queueMessage(conversation, kind, content, replyToSeq, file = null) {
    const conv = this.conversations.get(conversation);
    const clientId = uuid4();
    const now = Date.now();
    const msg = {
      key: `out:${clientId}`,
      conversation,
      seq: null,
      client_id: clientId,
      sender: this.me.id,
      mine: true,
      type: "message",
      kind,
      content,
      error: null,
      reply_to_seq: replyToSeq,
      time: now,
      status: "pending",
      localFile: file,
    };
    const item = {
      client_id: clientId,
      conversation,
      kind,
      content,
      reply_to_seq: replyToSeq,
      created: now,
      file,
    };
    this.setLast(conv, msg);
    await this.store.write([
      ["messages", msg],
      ["outbox", item],
      ["conversations", conv],
    ]);
    await this.loadMessages(conversation);
    this.cache(msg);
    this.emit("messages", conversation);
    this.emit("conversations");
    this.flushOutbox();
    return msg;
  }

  /** Send what waits, oldest first, one at a time; stop at the first that cannot go yet. */
  async flushOutbox() {
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.flushing = true;
    clearTimeout(this.flushTimer);
    try {
      do {
        this.flushAgain = false;
        if (!this.transport?.online) return;
        const items = (await this.store.getAll("outbox")).sort((a, b) => a.created - b.created);
        for (const item of items) {
          const result = await this.sendOne(item);
          if (result === "retry") {
            const floor = (Number(this.retryAfter) || 0) * 1000; // a rate limit's retry_after
            this.retryAfter = 0;
            const delay = Math.max(floor, backoffDelay(this.flushAttempt++, 1000));
            this.flushTimer = setTimeout(() => this.flushOutbox(), delay);
            return;
          }
          this.flushAttempt = 0;
        }
      } while (this.flushAgain);
    } finally {
      this.flushing = false;
    }
  }

  async sendOne(item) {
    const conv = this.conversations.get(item.conversation);
    const map = await this.loadMessages(item.conversation);
    const msg =
      map.get(`out:${item.client_id}`) || (await this.store.get("messages", `out:${item.client_id}`));
    try {
      if (item.kind === "media" && !item.content.media_id) await this.upload(item, msg);
      const ack = await this.e2e.send(item.conversation, item.content, {
        kind: item.kind,
        replyToSeq: item.reply_to_seq,
        clientId: item.client_id,
        mediaId: item.kind === "media" ? item.content.media_id : null,
        sendRaw: (payload) => this.transport.send(payload),
      });
      this.uploads.delete(item.client_id);
      const readBefore = conv.read_seq;
      Object.assign(msg, {
        seq: ack.seq,
        message_id: ack.message_id,
        time: Date.parse(ack.server_ts) || msg.time,
        status: "sent",
        content: item.content,
      });
      conv.last_seq = Math.max(conv.last_seq, ack.seq);
      // Our own message does not make the chat unread.
      if (readBefore >= ack.seq - 1) {
        conv.read_seq = ack.seq;
        conv.readDirty = true;
      }
      this.setLast(conv, msg);
      await this.store.write([
        ["messages", msg],
        ["conversations", conv],
        ["outbox", undefined, item.client_id, true],
      ]);
      this.cache(msg);
      this.emit("messages", item.conversation);
      this.emit("conversations");
      this.flushReadsSoon();
      return "sent";
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        this.unauthorized();
        return "retry";
      }
      const permanent = err instanceof MediaError || (err instanceof ApiError && PERMANENT.has(err.code));
      if (err instanceof ApiError && err.code === "rate_limited") this.retryAfter = err.data.retry_after;
      if (!permanent) {
        console.warn("natter: send will be retried", err);
        return "retry";
      }
      msg.status = "failed";
      msg.failReason = this.failText(err, item);
      this.uploads.delete(item.client_id);
      this.setLast(conv, msg);
      await this.store.write([
        ["messages", msg],
        ["conversations", conv],
        ["outbox", undefined, item.client_id, true],
      ]);
      this.cache(msg);
      this.emit("messages", item.conversation);
      this.emit("conversations");
      return "failed";
    }
  }

  failText(err, item) {
    if (err.code === "too_large") return "Too large to send";
    if (err.code === "not_member") return "You are not a member of this chat";
    if (item.kind === "media" && err.code === "http_404") return "This server does not take attachments";
    return err.message || "Not sent";
  }

  /**
   * Encrypt once, upload (resuming a big upload where it stopped), then name the blob
   * in the message. What is done is kept in the outbox, so a retry or a reload
   * sends the same ciphertext and never uploads twice.
   */
  async upload(item, msg) {
    if (!item.enc) {
      const { blob, key, sha256, size } = await encryptFile(item.file);
      item.enc = { blob, key: toBase64(key), sha256, size, resume: null };
      await this.store.put("outbox", item);
    }
    const enc = item.enc;
    this.uploads.set(item.client_id, 0);
    this.emit("upload", item.client_id);
    const answer = await uploadMedia(item.conversation, enc.blob, {
      resume: enc.resume,
      onProgress: (p) => {
        this.uploads.set(item.client_id, p);
        this.emit("upload", item.client_id);
      },
      onOpened: async (resume) => {
        enc.resume = resume;
        await this.store.put("outbox", item);
      },
    });
    if (answer.sha256 && answer.sha256.toLowerCase() !== enc.sha256) {
      throw new MediaError("the server stored other bytes than were sent");
    }
    item.content = {
      ...item.content,
      media_id: answer.media_id,
      key: enc.key,
      sha256: enc.sha256,
      size: enc.size,
    };
    delete item.enc; // uploaded: the ciphertext is not needed any more
    msg.content = item.content;
    await this.store.write([
      ["outbox", item],
      ["messages", msg],
    ]);
  }

  /** Try a failed message again, as a new message (its client_id was used). */
  async resend(msg) {
    const map = await this.loadMessages(msg.conversation);
    map.delete(msg.key);
    await this.store.delete("messages", msg.key);
    const content = { ...msg.content };
    if (msg.kind === "media") {
      delete content.media_id;
      delete content.key;
      delete content.sha256;
    }
    if (msg.kind === "media" && !msg.localFile) return;
    return this.queueMessage(msg.conversation, msg.kind, content, msg.reply_to_seq, msg.localFile || null);
  }

  // -- media ---------------------------------------------------------------------------------

  /** Download, check and decrypt an attachment; {url, blob}. Errors land in mediaState. */
  async openMedia(msg) {
    const state = this.mediaState.get(msg.key);
    if (state && state.url) return state;
    if (state && state.state === "downloading") return null;
    const c = msg.content;
    const set = (s) => {
      this.mediaState.set(msg.key, s);
      this.emit("media", msg.key);
    };
    if (msg.localFile) {
      const blob = msg.localFile;
      const done = { state: "done", url: URL.createObjectURL(blob), blob };
      set(done);
      return done;
    }
    set({ state: "downloading", progress: 0 });
    try {
      const buffer = await downloadMedia(c.media_id, (p) => set({ state: "downloading", progress: p }));
      set({ state: "downloading", progress: 1 });
      const parts = await decryptBlob(buffer, fromBase64(c.key), c.sha256);
      const blob = new Blob(parts, { type: c.mime || "application/octet-stream" });
      const done = { state: "done", url: URL.createObjectURL(blob), blob };
      set(done);
      return done;
    } catch (err) {
      let error = `Download failed: ${err.message}`;
      if (err instanceof ApiError && (err.code === "media_expired" || err.status === 410))
        error = EXPIRED_MEDIA_TEXT;
      else if (err instanceof ApiError && err.status === 404)
        error = "Download failed: this file is not available to you.";
      else if (err instanceof NetworkError) error = "Download failed: you are offline. Try again.";
      set({ state: "error", error });
      return null;
    }
  }

  // -- misc ----------------------------------------------------------------------------------

  announce(text) {
    const live = document.getElementById("announcer");
    if (!live) return;
    const line = document.createElement("p");
    line.textContent = text;
    live.append(line);
    while (live.childElementCount > 5) live.firstElementChild.remove();
  }

  safetyNumber(userId) {
    return this.e2e.safetyNumber(userId);
  }
}

const app = new App(document.getElementById("app"));
app.boot().catch((err) => {
  console.error(err);
  document.getElementById("app").textContent = `Natter could not start: ${err.message}`;
});
