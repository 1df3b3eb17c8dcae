// End-to-end encryption for the web client: a faithful port of the Python SDK's
// client/natter_client/e2e.py and keystore.py onto the browser crypto library
// (static/natter/crypto/, docs/crypto.md). The server only ever sees ciphertext.

import {
  Bundle,
  CryptoError,
  DuplicateMessage,
  IdentityKeyPair,
  PreKey,
  SenderKey,
  SenderKeyReceiver,
  Session,
  SignedPreKey,
  SystemRandom,
  acceptPrekeyMessage,
  bytesEqual,
  decodeContent,
  encodeContent,
  fromBase64,
  generateOneTimePrekeys,
  groupBodyKeyId,
  parsePrekeyMessage,
  safetyNumber,
  toBase64,
} from "../crypto/index.js";
import { get, post, api, seg } from "./api.js";
import { Mutex } from "./util.js";

export const PREKEY_STOCK = 100;
// Resends after a device_mismatch before giving up (each fetches the missing devices).
export const MISMATCH_RETRIES = 3;
// Older sessions kept per remote device for decrypting late messages (crypto.md §5).
export const OLD_SESSIONS_KEPT = 4;
// Sender key ids kept per (group, sender device): messages sent just before a rotation still open.
export const SENDER_KEYS_KEPT = 2;
// Opened message ids remembered, to drop redeliveries across reloads.
export const SEEN_KEPT = 20000;

export class UndecryptableError extends Error {
  constructor(message) {
    super(message);
    this.name = "UndecryptableError";
  }
}

/** Everything secret this device holds; the same shape as the SDK's KeyStore.to_dict(). */
export class KeyStore {
  constructor() {
    this.identity = null;
    this.signedPrekeys = new Map(); // key id -> SignedPreKey
    this.signedPrekeyId = 0;
    this.oneTimePrekeys = new Map(); // key id -> PreKey
    this.nextPrekeyId = 1;
    this.sessions = new Map(); // remote device -> [Session], the one to send with first
    this.identities = new Map(); // remote device -> identity key first seen (trust on first use)
    this.identityChanges = new Set(); // devices whose identity key changed; the UI says so
    this.ownSenderKeys = new Map(); // group -> {key: SenderKey, given: Set(device)}
    this.senderKeys = new Map(); // group -> Map(sender device -> [SenderKeyReceiver], newest last)
    this.seen = new Set(); // opened message ids, oldest first (insertion order)
    this.account = {};
  }

  sessionFor(device) {
    const list = this.sessions.get(device);
    return list && list.length ? list[0] : null;
  }

  /** Make `session` the one to send with; keep a few older ones for late messages. */
  sessionPut(device, session) {
    const others = (this.sessions.get(device) || []).filter((s) => s !== session);
    this.sessions.set(device, [session, ...others].slice(0, 1 + OLD_SESSIONS_KEPT));
  }

  /** Forget a remote device (revoked, or its identity changed). */
  deviceForget(device) {
    this.sessions.delete(device);
    for (const own of this.ownSenderKeys.values()) own.given.delete(device);
  }

  /** Remember a device's identity key; false if it differs from the one we had. */
  identityCheck(device, identityKey) {
    const known = this.identities.get(device);
    this.identities.set(device, Uint8Array.from(identityKey));
    if (known && !bytesEqual(known, identityKey)) {
      this.identityChanges.add(device);
      return false;
    }
    return true;
  }

  receiverFor(group, sender, keyId) {
    const ring = this.senderKeys.get(group)?.get(sender) || [];
    return ring.find((r) => r.keyId === keyId) || null;
  }

  receiverPut(group, sender, receiver) {
    if (!this.senderKeys.has(group)) this.senderKeys.set(group, new Map());
    const senders = this.senderKeys.get(group);
    const ring = (senders.get(sender) || []).filter((r) => r.keyId !== receiver.keyId);
    ring.push(receiver);
    senders.set(sender, ring.slice(-SENDER_KEYS_KEPT));
  }

  firstTime(messageId) {
    if (this.seen.has(messageId)) return false;
    this.seen.add(messageId);
    while (this.seen.size > SEEN_KEPT) this.seen.delete(this.seen.values().next().value);
    return true;
  }

  toJSON() {
    const mapObj = (m, f) => Object.fromEntries([...m].map(([k, v]) => [k, f(v)]));
    return {
      version: 1,
      account: this.account,
      identity: this.identity ? this.identity.toJSON() : null,
      signed_prekeys: [...this.signedPrekeys.values()].map((k) => k.toJSON()),
      signed_prekey_id: this.signedPrekeyId,
      one_time_prekeys: [...this.oneTimePrekeys.values()].map((k) => k.toJSON()),
      next_prekey_id: this.nextPrekeyId,
      sessions: mapObj(this.sessions, (list) => list.map((s) => s.toJSON())),
      identities: mapObj(this.identities, (k) => toBase64(k)),
      identity_changes: [...this.identityChanges].sort(),
      own_sender_keys: mapObj(this.ownSenderKeys, (o) => ({
        key: o.key.toJSON(),
        given: [...o.given].sort(),
      })),
      sender_keys: mapObj(this.senderKeys, (senders) =>
        mapObj(senders, (ring) => ring.map((r) => r.toJSON())),
      ),
      seen: [...this.seen],
    };
  }

  static fromJSON(data) {
    const ks = new KeyStore();
    if (!data) return ks;
    ks.account = data.account || {};
    ks.identity = data.identity ? IdentityKeyPair.fromJSON(data.identity) : null;
    for (const k of data.signed_prekeys || []) {
      const key = SignedPreKey.fromJSON(k);
      ks.signedPrekeys.set(key.keyId, key);
    }
    ks.signedPrekeyId = data.signed_prekey_id || 0;
    for (const k of data.one_time_prekeys || []) {
      const key = PreKey.fromJSON(k);
      ks.oneTimePrekeys.set(key.keyId, key);
    }
    ks.nextPrekeyId = data.next_prekey_id || 1;
    for (const [d, list] of Object.entries(data.sessions || {})) {
      ks.sessions.set(
        d,
        list.map((s) => Session.fromJSON(s)),
      );
    }
    for (const [d, k] of Object.entries(data.identities || {})) ks.identities.set(d, fromBase64(k));
    ks.identityChanges = new Set(data.identity_changes || []);
    for (const [g, o] of Object.entries(data.own_sender_keys || {})) {
      ks.ownSenderKeys.set(g, { key: SenderKey.fromJSON(o.key), given: new Set(o.given) });
    }
    for (const [g, senders] of Object.entries(data.sender_keys || {})) {
      const m = new Map();
      for (const [d, ring] of Object.entries(senders))
        m.set(
          d,
          ring.map((r) => SenderKeyReceiver.fromJSON(r)),
        );
      ks.senderKeys.set(g, m);
    }
    ks.seen = new Set(data.seen || []);
    return ks;
  }
}

/** The `sender_key` content that gives a device our key for one group (§6, §7). */
export function senderKeyContent(conversation, key) {
  return key.distributionContent(conversation);
}

/**
 * The crypto half of this device. `persist(extraWrites)` must store the key store
 * (and any extra rows, in one transaction) before it resolves.
 */
export class EndToEnd {
  constructor({ store, userId, deviceId, persist, onIdentityChange = () => {} }) {
    this.store = store;
    this.userId = userId;
    this.deviceId = deviceId;
    this.persist = persist;
    this.onIdentityChange = onIdentityChange;
    this.rng = new SystemRandom();
    this.lock = new Mutex();
    // conversation -> {kind, devices: [{user, device, identityKey}]}, refreshed on mismatch.
    this.devices = new Map();
  }

  /** Hold the state for one operation: ratchet state must never be used twice. */
  locked(fn) {
    return this.lock.run(fn);
  }

  // -- publishing keys -----------------------------------------------------------------------

  /** Create this device's keys if it has none, upload them; returns the server's prekey stock. */
  publish() {
    return this.locked(async () => {
      const st = this.store;
      if (!st.identity) {
        st.identity = IdentityKeyPair.generate(this.rng);
        st.signedPrekeyId = 1;
        st.signedPrekeys = new Map([[1, SignedPreKey.generate(st.identity, 1, this.rng)]]);
      }
      // The signed prekey goes along every time: if an earlier first upload was
      // lost, this one is the first the server sees (it replaces the same key).
      const body = { signed_prekey: st.signedPrekeys.get(st.signedPrekeyId).toWire() };
      const fresh = generateOneTimePrekeys(
        st.nextPrekeyId,
        Math.max(0, PREKEY_STOCK - st.oneTimePrekeys.size),
        this.rng,
      );
      const stock = await this._upload(body, fresh);
      return stock < PREKEY_STOCK ? this._topUp() : stock;
    });
  }

  /** Upload one-time prekeys until the server holds PREKEY_STOCK again (after prekeys_low). */
  async _topUp() {
    const answer = await get("/api/v1/keys/count");
    const missing = PREKEY_STOCK - Number(answer.one_time_prekeys);
    if (missing <= 0) return Number(answer.one_time_prekeys);
    // Private halves of claimed keys stay until a prekey message uses them (ids only grow).
    return this._upload({}, generateOneTimePrekeys(this.store.nextPrekeyId, missing, this.rng));
  }

  async _upload(body, fresh) {
    const st = this.store;
    for (const key of fresh) st.oneTimePrekeys.set(key.keyId, key);
    if (fresh.length) st.nextPrekeyId = fresh[fresh.length - 1].keyId + 1;
    await this.persist(); // the private halves exist before anybody can claim the public ones
    const answer = await api("PUT", "/api/v1/keys", {
      identity_key: toBase64(st.identity.publicKey),
      ...body,
      one_time_prekeys: fresh.map((k) => k.toWire()),
    });
    return Number(answer.one_time_prekeys);
  }

  // -- sending -------------------------------------------------------------------------------

  /**
   * Encrypt `content` for every device of the conversation and hand the send to
   * `sendRaw(payload)` (WebSocket frame or REST), which resolves to the ack or
   * throws ApiError. A device_mismatch refreshes the device list, claims the
   * missing bundles and resends with the same client_id.
   */
  send(conversation, content, { kind = "text", replyToSeq = null, clientId, sendRaw, mediaId = null }) {
    return this.locked(() =>
      this._send(conversation, encodeContent(content), { kind, replyToSeq, clientId, sendRaw, mediaId }),
    );
  }

  async _send(conversation, plaintext, { kind, replyToSeq, clientId, sendRaw, mediaId }) {
    let lastError = null;
    for (let attempt = 0; attempt <= MISMATCH_RETRIES; attempt++) {
      const { kind: kindOf, devices } = await this._conversationDevices(conversation, attempt > 0);
      const targets = devices.filter((d) => d.device !== this.deviceId);
      await this._sessionsEnsure(targets);
      let groupBody = null;
      let ciphertexts;
      if (kindOf === "group") {
        const own = this._ownSenderKey(conversation);
        const distribution = encodeContent(senderKeyContent(conversation, own.key));
        ciphertexts = this._encryptPairwise(
          targets.map((t) => t.device).filter((d) => !own.given.has(d)),
          distribution,
        );
        groupBody = own.key.encrypt(plaintext, conversation, this.deviceId);
      } else {
        ciphertexts = this._encryptPairwise(
          targets.map((t) => t.device),
          plaintext,
        );
      }
      await this.persist(); // never send with a ratchet state that is not stored
      const payload = {
        client_id: clientId,
        conversation,
        kind,
        ciphertexts: [...ciphertexts].map(([device, c]) => ({
          device,
          envelope: c.envelope,
          body: toBase64(c.body),
        })),
      };
      if (groupBody) payload.group_body = toBase64(groupBody);
      if (replyToSeq !== null && replyToSeq !== undefined) payload.reply_to_seq = replyToSeq;
      if (mediaId) payload.media_id = mediaId; // the server learns the blob is in use (§7c)
      let ack;
      try {
        ack = await sendRaw(payload);
      } catch (err) {
        if (err && err.code === "device_mismatch") {
          lastError = err;
          for (const device of err.data.extra || []) this.store.deviceForget(device);
          continue;
        }
        throw err;
      }
      if (kindOf === "group") {
        const own = this.store.ownSenderKeys.get(conversation);
        if (own) for (const d of ciphertexts.keys()) own.given.add(d);
        await this.persist();
      }
      return ack;
    }
    throw lastError;
  }

  _encryptPairwise(devices, plaintext) {
    const out = new Map();
    for (const device of devices) {
      const session = this.store.sessionFor(device);
      if (!session) continue; // no bundle: the device has not published keys (yet)
      out.set(device, session.encrypt(plaintext));
    }
    return out;
  }

  _ownSenderKey(conversation) {
    let own = this.store.ownSenderKeys.get(conversation);
    if (!own) {
      own = { key: SenderKey.create(this.rng), given: new Set() };
      this.store.ownSenderKeys.set(conversation, own);
    }
    return own;
  }

  async _conversationDevices(conversation, refresh) {
    const cached = this.devices.get(conversation);
    // A group's members change by others' hands at any moment, and the server cannot
    // tell that a new member lacks our sender key: ask every time.
    if (refresh || !cached || cached.kind === "group") {
      const answer = await get(`/api/v1/conversations/${seg(conversation)}/devices`);
      this.devices.set(conversation, {
        kind: answer.kind,
        devices: answer.devices.map((d) => ({
          user: d.user,
          device: d.device,
          identityKey: fromBase64(d.identity_key),
        })),
      });
    }
    return this.devices.get(conversation);
  }

  /** Start a session with every target device we have none with, one claim per user. */
  async _sessionsEnsure(targets) {
    const wanted = new Map();
    for (const t of targets) {
      const session = this.store.sessionFor(t.device);
      if (session && bytesEqual(session.remoteIdentityKey, t.identityKey)) continue;
      if (!wanted.has(t.user)) wanted.set(t.user, []);
      wanted.get(t.user).push(t.device);
    }
    for (const [user, deviceIds] of wanted) {
      const answer = await post("/api/v1/keys/claim", { user_id: user, device_ids: deviceIds });
      for (const wire of answer.bundles) {
        let session, bundle;
        try {
          bundle = Bundle.fromWire(wire);
          session = Session.initiate(this.store.identity, bundle, this.rng);
        } catch (err) {
          if (!(err instanceof CryptoError)) throw err;
          console.warn("natter: bundle of", wire.device_id, "refused:", err.message);
          continue;
        }
        if (!this.store.identityCheck(wire.device_id, bundle.identityKey)) {
          this.onIdentityChange(user, wire.device_id);
        }
        this.store.sessionPut(wire.device_id, session);
      }
    }
  }

  // -- receiving -----------------------------------------------------------------------------

  /**
   * Decrypt a message event, or act on a key, device or group event. Returns
   * null for a message already opened (a redelivery), else {event, content, error}.
   * The caller persists the key store (with what it shows) before acking.
   * Run inside locked().
   */
  async open(event) {
    if (event.type === "message") return this._openMessage(event);
    if (event.type === "device") this._onDevice(event);
    else if (event.type === "group") this._onGroup(event);
    else if (event.type === "prekeys_low") {
      try {
        await this._topUp();
      } catch (err) {
        console.warn("natter: prekey top-up failed", err);
      }
    }
    return { event, content: null, error: null };
  }

  _openMessage(event) {
    const messageId = String(event.message_id);
    if (!this.store.firstTime(messageId)) return null;
    const conversation = event.conversation;
    const sender = event.sender.device;
    let content;
    try {
      if (event.envelope === "group") {
        content = this._openGroup(conversation, sender, fromBase64(event.body));
      } else {
        content = this._openPairwise(event.sender.user, sender, event.envelope, fromBase64(event.body));
        if (content.type === "sender_key") {
          this._installSenderKey(conversation, sender, content);
          if (event.group_body !== undefined && event.group_body !== null) {
            content = this._openGroup(conversation, sender, fromBase64(event.group_body));
          }
        }
      }
    } catch (err) {
      if (err instanceof DuplicateMessage) return null;
      console.warn("natter: message", messageId, "from", sender, "not opened:", err);
      return { event, content: null, error: `${err.name}: ${err.message}` };
    }
    return { event, content, error: null };
  }

  _openPairwise(senderUser, sender, envelope, body) {
    const st = this.store;
    if (envelope === "prekey") {
      const prekey = parsePrekeyMessage(body);
      for (const session of st.sessions.get(sender) || []) {
        if (bytesEqual(session.baseKey, prekey.ephemeralKey)) {
          const plaintext = session.decrypt(body, "prekey");
          st.sessionPut(sender, session);
          return decodeContent(plaintext);
        }
      }
      const { session, plaintext, usedOpkId } = acceptPrekeyMessage(
        st.identity,
        st.signedPrekeys,
        st.oneTimePrekeys,
        body,
        this.rng,
      );
      if (usedOpkId !== null) st.oneTimePrekeys.delete(usedOpkId);
      if (!st.identityCheck(sender, session.remoteIdentityKey)) this.onIdentityChange(senderUser, sender);
      st.sessionPut(sender, session);
      return decodeContent(plaintext);
    }
    if (envelope !== "message") throw new UndecryptableError(`unknown envelope ${envelope}`);
    let last = null;
    for (const session of [...(st.sessions.get(sender) || [])]) {
      try {
        return decodeContent(session.decrypt(body));
      } catch (err) {
        if (err instanceof DuplicateMessage) throw err;
        if (!(err instanceof CryptoError)) throw err;
        last = err;
      }
    }
    if (last) throw last;
    throw new UndecryptableError("no session with this device");
  }

  _installSenderKey(conversation, sender, content) {
    if (content.conversation !== conversation) {
      throw new UndecryptableError("a sender key for another conversation");
    }
    const receiver = SenderKeyReceiver.fromDistribution({
      key_id: content.key_id,
      iteration: content.iteration,
      chain_key: fromBase64(content.chain_key),
      signing_key: fromBase64(content.signing_key),
    });
    if (!this.store.receiverFor(conversation, sender, receiver.keyId)) {
      this.store.receiverPut(conversation, sender, receiver);
    }
  }

  _openGroup(conversation, sender, body) {
    const receiver = this.store.receiverFor(conversation, sender, groupBodyKeyId(body));
    if (!receiver) throw new UndecryptableError("no sender key from this device for this group");
    return decodeContent(receiver.decrypt(body, conversation, sender));
  }

  _onDevice(event) {
    const { action, device } = event;
    if ((action === "removed" || action === "identity_changed") && device) {
      this.store.deviceForget(device);
      if (action === "identity_changed") {
        this.store.identityChanges.add(device);
        // The event is the notice; forget the old key so the next claim does not
        // report the same change a second time.
        this.store.identities.delete(device);
      }
      this.devices.clear();
    }
  }

  _onGroup(event) {
    const conversation = event.conversation;
    this.devices.delete(conversation);
    if (event.action === "removed" || event.action === "left") {
      // Whoever went must not read what comes next: a new sender key, given afresh
      // to the members that remain (docs/crypto.md §6).
      this.store.ownSenderKeys.delete(conversation);
      if ((event.user_ids || []).includes(this.userId)) this.store.senderKeys.delete(conversation);
    }
  }

  // -- verification --------------------------------------------------------------------------

  /** The 60-digit number two people compare to know no one is in between. */
  async safetyNumber(userId) {
    const [mine, theirs] = await Promise.all([
      get(`/api/v1/users/${seg(this.userId)}/devices`),
      get(`/api/v1/users/${seg(userId)}/devices`),
    ]);
    const keys = (list) => list.filter((d) => d.identity_key).map((d) => fromBase64(d.identity_key));
    return safetyNumber(this.userId, keys(mine), userId, keys(theirs));
  }
}
