// X3DH (docs/crypto.md §3), the Double Ratchet (§4) and the envelopes (§5).

import {
  BadSignature,
  CryptoError,
  DecryptError,
  DuplicateMessage,
  MalformedMessage,
  SystemRandom,
  TooManySkipped,
  aeadDecrypt,
  aeadEncrypt,
  asBytes,
  bytesEqual,
  concat,
  dh,
  ed25519PkToX25519,
  fromBase64,
  fromHex,
  kdf,
  readU32,
  toBase64,
  toHex,
  u32,
  utf8,
  x25519Base,
} from "./primitives.js";
import { verifySignedPrekey } from "./keys.js";

export const MAX_SKIP = 1000;
export const MAX_STORED_SKIPPED = 2000;
export const HEADER_LENGTH = 41;
export const PREKEY_PREFIX_LENGTH = 73;
const TAG_LENGTH = 16;
const VERSION = 0x01;

const X3DH_LABEL = utf8("natter-x3dh-v1");
const RK_LABEL = utf8("natter-rk-v1");
const MK_LABEL = utf8("natter-mk-v1");
const ZERO_KEY = new Uint8Array(32);
const FF_PAD = new Uint8Array(32).fill(0xff);
const CK_MSG = new Uint8Array([0x01]);
const CK_NEXT = new Uint8Array([0x02]);

// ---------------------------------------------------------------------------
// KDFs (§4)

/** KDF_RK(rk, dh_out) -> [new root key, new chain key]. */
export function kdfRk(rk, dhOut) {
  const out = kdf(rk, concat(RK_LABEL, dhOut), 64);
  return [out.slice(0, 32), out.slice(32, 64)];
}

/** KDF_CK(ck) -> [message key, next chain key]. */
export function kdfCk(ck) {
  return [kdf(ck, CK_MSG, 32), kdf(ck, CK_NEXT, 32)];
}

/** Message key expansion -> [AEAD key, nonce]. */
export function expandMessageKey(mk, label = MK_LABEL) {
  const k = kdf(mk, label, 56);
  return [k.slice(0, 32), k.slice(32, 56)];
}

// ---------------------------------------------------------------------------
// X3DH (§3)

function x3dhSecret(dhs) {
  return kdf(ZERO_KEY, concat(X3DH_LABEL, FF_PAD, ...dhs), 32);
}

/** Step 1 of §3: BadSignature unless IK_B signed SPK_B. */
function verifyBundle(bundle) {
  if (
    !verifySignedPrekey(
      bundle.identityKey,
      bundle.signedPrekey.publicKey,
      bundle.signedPrekey.signature,
    )
  ) {
    throw new BadSignature("signed prekey signature does not verify");
  }
}

/**
 * The initiator's half of X3DH with a given ephemeral private key.
 * Verifies the bundle's signature first (BadSignature).
 * Returns {sk, ad, ephemeralKey, dhOutputs: [DH1, DH2, DH3(, DH4)]}.
 */
export function x3dhInitiate(identity, bundle, ekPriv) {
  verifyBundle(bundle);
  const ek = x25519Base(ekPriv);
  const ikbX = ed25519PkToX25519(bundle.identityKey);
  const spkB = bundle.signedPrekey.publicKey;
  const dhs = [dh(identity.x25519PrivateKey, spkB), dh(ekPriv, ikbX), dh(ekPriv, spkB)];
  if (bundle.oneTimePrekey) dhs.push(dh(ekPriv, bundle.oneTimePrekey.publicKey));
  return {
    sk: x3dhSecret(dhs),
    ad: concat(identity.publicKey, bundle.identityKey),
    ephemeralKey: ek,
    dhOutputs: dhs,
  };
}

/**
 * The responder's half of X3DH. `signedPrekey`/`oneTimePrekey` are local key
 * objects ({privateKey}); `oneTimePrekey` may be null. Returns {sk, ad, dhOutputs}.
 */
export function x3dhRespond(identity, signedPrekey, oneTimePrekey, initiatorIdentity, ephemeralKey) {
  const ikaX = ed25519PkToX25519(initiatorIdentity);
  const dhs = [
    dh(signedPrekey.privateKey, ikaX),
    dh(identity.x25519PrivateKey, ephemeralKey),
    dh(signedPrekey.privateKey, ephemeralKey),
  ];
  if (oneTimePrekey) dhs.push(dh(oneTimePrekey.privateKey, ephemeralKey));
  return { sk: x3dhSecret(dhs), ad: concat(initiatorIdentity, identity.publicKey), dhOutputs: dhs };
}

// ---------------------------------------------------------------------------
// Wire formats (§4, §5)

function parseRatchetMessage(msg) {
  const m = asBytes(msg, "body");
  if (m.length < HEADER_LENGTH + TAG_LENGTH) throw new MalformedMessage("ratchet message too short");
  if (m[0] !== VERSION) throw new MalformedMessage(`unknown ratchet message version ${m[0]}`);
  return {
    header: m.subarray(0, HEADER_LENGTH),
    ratchetKey: m.slice(1, 33),
    pn: readU32(m, 33),
    n: readU32(m, 37),
    ciphertext: m.subarray(HEADER_LENGTH),
  };
}

/**
 * Parse a "prekey" body: 0x01 || IK_A (32) || EK_A (32) || u32(spk_id) ||
 * u32(opk_id or 0) || ratchet message. Returns
 * {identityKey, ephemeralKey, spkId, opkId (null for 0), message}.
 */
export function parsePrekeyMessage(body) {
  const b = asBytes(body, "body");
  if (b.length < PREKEY_PREFIX_LENGTH + HEADER_LENGTH + TAG_LENGTH) {
    throw new MalformedMessage("prekey message too short");
  }
  if (b[0] !== VERSION) throw new MalformedMessage(`unknown prekey message version ${b[0]}`);
  const opkId = readU32(b, 69);
  return {
    identityKey: b.slice(1, 33),
    ephemeralKey: b.slice(33, 65),
    spkId: readU32(b, 65),
    opkId: opkId === 0 ? null : opkId,
    message: b.slice(PREKEY_PREFIX_LENGTH),
  };
}

// ---------------------------------------------------------------------------
// Session

function skippedId(ratchetKey, n) {
  return `${toHex(ratchetKey)}:${n}`;
}

const STATE_FIELDS = [
  "initiator",
  "associatedData",
  "baseKey",
  "spkId",
  "opkId",
  "received",
  "rootKey",
  "sendingPrivate",
  "sendingPublic",
  "receivingPublic",
  "sendingChain",
  "receivingChain",
  "sent",
  "receivedCount",
  "previousSent",
  "skipped",
];

/**
 * One Double Ratchet session with one remote device. The state mirrors the
 * Python implementation's, and toJSON() gives the same JSON shape as its to_dict().
 */
export class Session {
  constructor(state, rng = new SystemRandom()) {
    for (const k of STATE_FIELDS) this[k] = state[k] ?? null;
    this.sent = state.sent ?? 0;
    this.receivedCount = state.receivedCount ?? 0;
    this.previousSent = state.previousSent ?? 0;
    this.skipped = state.skipped ?? new Map(); // "hex(ratchet_pub):n" -> message key, oldest first
    this.rng = rng;
  }

  /** X3DH as the initiator (draws ek_priv, then ratchet_priv) and the first sending chain. */
  static initiate(identity, bundle, rng = new SystemRandom()) {
    verifyBundle(bundle); // before any draw
    const ekPriv = rng.bytes(32);
    const { sk, ad, ephemeralKey } = x3dhInitiate(identity, bundle, ekPriv);
    const sendingPrivate = rng.bytes(32);
    const spkB = bundle.signedPrekey.publicKey;
    const [rootKey, sendingChain] = kdfRk(sk, dh(sendingPrivate, spkB));
    return new Session(
      {
        initiator: true,
        associatedData: ad,
        baseKey: ephemeralKey,
        spkId: bundle.signedPrekey.keyId,
        opkId: bundle.oneTimePrekey ? bundle.oneTimePrekey.keyId : null,
        received: false,
        rootKey,
        sendingPrivate,
        sendingPublic: x25519Base(sendingPrivate),
        receivingPublic: Uint8Array.from(spkB),
        sendingChain,
        receivingChain: null,
      },
      rng,
    );
  }

  /** The other device's Ed25519 identity key, as authenticated by X3DH. */
  get remoteIdentityKey() {
    return this.initiator ? this.associatedData.slice(32, 64) : this.associatedData.slice(0, 32);
  }

  get localIdentityKey() {
    return this.initiator ? this.associatedData.slice(0, 32) : this.associatedData.slice(32, 64);
  }

  get isInitiator() {
    return this.initiator;
  }

  /** "prekey" until this (initiating) side has decrypted a message of the session, then "message". */
  get nextEnvelope() {
    return this.initiator && !this.received ? "prekey" : "message";
  }

  _state() {
    const st = {};
    for (const k of STATE_FIELDS) st[k] = this[k];
    return st;
  }

  _clone() {
    const st = this._state();
    st.skipped = new Map(this.skipped);
    return new Session(st, this.rng);
  }

  _commit(other) {
    for (const k of STATE_FIELDS) this[k] = other[k];
  }

  /** Encrypt bytes (or a string, as UTF-8) with the next sending key. Returns {envelope, body}. */
  encrypt(plaintext) {
    const pt = typeof plaintext === "string" ? utf8(plaintext) : asBytes(plaintext, "plaintext");
    if (!this.sendingChain) throw new CryptoError("session has no sending chain");
    const header = concat([VERSION], this.sendingPublic, u32(this.previousSent), u32(this.sent));
    const [mk, nextCk] = kdfCk(this.sendingChain);
    const [key, nonce] = expandMessageKey(mk);
    const message = concat(header, aeadEncrypt(key, nonce, pt, concat(this.associatedData, header)));
    this.sendingChain = nextCk;
    this.sent += 1;
    const envelope = this.nextEnvelope;
    if (envelope === "prekey") {
      const body = concat(
        [VERSION],
        this.localIdentityKey,
        this.baseKey,
        u32(this.spkId),
        u32(this.opkId ?? 0),
        message,
      );
      return { envelope, body };
    }
    return { envelope, body: message };
  }

  /** Whether a parsed prekey message belongs to this session (same EK_A and IK_A, §5). */
  matchesPrekeyMessage(parsed) {
    const initiatorIk = this.associatedData.slice(0, 32);
    return bytesEqual(parsed.ephemeralKey, this.baseKey) && bytesEqual(parsed.identityKey, initiatorIk);
  }

  /**
   * Decrypt a ratchet message (envelope "message"), or, with envelope "prekey",
   * a prekey body carrying this session's EK_A (§5). Transactional: the state
   * changes only when the message authenticates, and a failure draws nothing.
   */
  decrypt(body, envelope = "message") {
    let msg = body;
    if (envelope === "prekey") {
      const parsed = parsePrekeyMessage(body);
      if (!this.matchesPrekeyMessage(parsed)) {
        throw new DecryptError("prekey message belongs to another session");
      }
      msg = parsed.message;
    } else if (envelope !== "message") {
      throw new MalformedMessage(`unknown envelope ${envelope}`);
    }
    const m = parseRatchetMessage(msg);
    const st = this._clone();
    const plaintext = st._decryptParsed(m);
    st.received = true;
    this._commit(st);
    return plaintext;
  }

  _open(mk, m) {
    const [key, nonce] = expandMessageKey(mk);
    return aeadDecrypt(key, nonce, m.ciphertext, concat(this.associatedData, m.header));
  }

  /** §4's decrypt on a working copy. */
  _decryptParsed(m) {
    const id = skippedId(m.ratchetKey, m.n);
    if (this.skipped.has(id)) {
      const plaintext = this._open(this.skipped.get(id), m);
      this.skipped.delete(id);
      return plaintext;
    }

    if (this.receivingPublic !== null && bytesEqual(m.ratchetKey, this.receivingPublic)) {
      if (this.receivingChain === null) throw new DecryptError("no receiving chain for this ratchet key");
      if (m.n < this.receivedCount) {
        throw new DuplicateMessage(`message ${m.n} of this chain was already decrypted`);
      }
      if (m.n - this.receivedCount > MAX_SKIP) {
        throw new TooManySkipped(`message ${m.n} would skip more than ${MAX_SKIP} keys`);
      }
      this._storeSkipped(m.n);
      const [mk, nextCk] = kdfCk(this.receivingChain);
      this.receivingChain = nextCk;
      this.receivedCount += 1;
      return this._open(mk, m);
    }

    // A new ratchet key: finish the old receiving chain, then the DH ratchet step.
    // One header may make the receiver skip at most MAX_SKIP keys in all.
    let oldChainSkips = 0;
    if (this.receivingChain !== null) oldChainSkips = Math.max(0, m.pn - this.receivedCount);
    if (oldChainSkips + m.n > MAX_SKIP) {
      throw new TooManySkipped(`header would skip more than ${MAX_SKIP} keys`);
    }
    this._storeSkipped(m.pn);
    let receiveDh;
    try {
      receiveDh = dh(this.sendingPrivate, m.ratchetKey);
    } catch (e) {
      throw new DecryptError("unusable ratchet key");
    }
    this.previousSent = this.sent;
    this.sent = 0;
    this.receivedCount = 0;
    this.receivingPublic = Uint8Array.from(m.ratchetKey);
    [this.rootKey, this.receivingChain] = kdfRk(this.rootKey, receiveDh);
    this._storeSkipped(m.n);
    const [mk, nextCk] = kdfCk(this.receivingChain);
    this.receivingChain = nextCk;
    this.receivedCount += 1;
    const plaintext = this._open(mk, m);
    // Authenticated: the sending half of the step, with its draw (§1), so a
    // message that fails to open draws nothing.
    this.sendingPrivate = this.rng.bytes(32);
    this.sendingPublic = x25519Base(this.sendingPrivate);
    [this.rootKey, this.sendingChain] = kdfRk(this.rootKey, dh(this.sendingPrivate, m.ratchetKey));
    return plaintext;
  }

  /** Derive and keep the receiving chain's keys up to `until`, dropping the oldest beyond MAX_STORED_SKIPPED. */
  _storeSkipped(until) {
    if (this.receivingChain === null || this.receivingPublic === null) return;
    while (this.receivedCount < until) {
      const [mk, nextCk] = kdfCk(this.receivingChain);
      this.receivingChain = nextCk;
      this.skipped.set(skippedId(this.receivingPublic, this.receivedCount), mk);
      this.receivedCount += 1;
    }
    while (this.skipped.size > MAX_STORED_SKIPPED) {
      this.skipped.delete(this.skipped.keys().next().value);
    }
  }

  /** JSON-safe state, bytes as base64 (the shape of the Python Session.to_dict()). Contains secrets. */
  toJSON() {
    const b = (x) => (x === null ? null : toBase64(x));
    const skipped = [];
    for (const [id, mk] of this.skipped) {
      const [hex, n] = id.split(":");
      skipped.push([toBase64(fromHex(hex)), Number(n), toBase64(mk)]);
    }
    return {
      version: 1,
      initiator: this.initiator,
      associated_data: b(this.associatedData),
      base_key: b(this.baseKey),
      spk_id: this.spkId,
      opk_id: this.opkId,
      received: this.received,
      root_key: b(this.rootKey),
      sending_private: b(this.sendingPrivate),
      receiving_public: b(this.receivingPublic),
      sending_chain: b(this.sendingChain),
      receiving_chain: b(this.receivingChain),
      sent: this.sent,
      received_count: this.receivedCount,
      previous_sent: this.previousSent,
      skipped,
    };
  }

  /** From toJSON() output (an object or its JSON text); `rng` draws the future ratchet keys. */
  static fromJSON(obj, rng = new SystemRandom()) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    if (!o || o.version !== 1) throw new MalformedMessage("unsupported session state version");
    const b = (x) => (x === null || x === undefined ? null : fromBase64(x));
    const skipped = new Map();
    for (const [pub, n, mk] of o.skipped || []) skipped.set(skippedId(fromBase64(pub), n), fromBase64(mk));
    const sendingPrivate = fromBase64(o.sending_private);
    return new Session(
      {
        initiator: !!o.initiator,
        associatedData: b(o.associated_data),
        baseKey: b(o.base_key),
        spkId: o.spk_id,
        opkId: o.opk_id ?? null,
        received: !!o.received,
        rootKey: b(o.root_key),
        sendingPrivate,
        sendingPublic: x25519Base(sendingPrivate),
        receivingPublic: b(o.receiving_public),
        sendingChain: b(o.sending_chain),
        receivingChain: b(o.receiving_chain),
        sent: o.sent,
        receivedCount: o.received_count,
        previousSent: o.previous_sent,
        skipped,
      },
      rng,
    );
  }
}

function lookup(store, id) {
  if (store == null || id == null) return undefined;
  if (store instanceof Map) return store.get(id) ?? store.get(String(id));
  if (Array.isArray(store)) return store.find((k) => k && k.keyId === id);
  return Object.hasOwn(store, id) ? store[id] : undefined;
}

/**
 * Bob's side: X3DH from a prekey body, then decrypt its message.
 * `signedPrekeys` and `oneTimePrekeys` map key id -> key object (Map, plain
 * object or array of keys); neither is mutated — the caller deletes the
 * one-time prekey `usedOpkId` once it has stored the session.
 * Returns {session, plaintext, usedOpkId (null when none)}.
 */
export function acceptPrekeyMessage(
  identity,
  signedPrekeys,
  oneTimePrekeys,
  body,
  rng = new SystemRandom(),
) {
  const parsed = parsePrekeyMessage(body);
  const spk = lookup(signedPrekeys, parsed.spkId);
  if (!spk) throw new DecryptError(`unknown signed prekey ${parsed.spkId}`);
  let opk = null;
  if (parsed.opkId !== null) {
    opk = lookup(oneTimePrekeys, parsed.opkId);
    if (!opk) throw new DecryptError(`unknown or used one-time prekey ${parsed.opkId}`);
  }
  let sk, ad;
  try {
    ({ sk, ad } = x3dhRespond(identity, spk, opk, parsed.identityKey, parsed.ephemeralKey));
  } catch (e) {
    if (e instanceof CryptoError) throw new DecryptError(`unusable keys in prekey message: ${e.message}`);
    throw e;
  }
  const session = new Session(
    {
      initiator: false,
      associatedData: ad,
      baseKey: parsed.ephemeralKey,
      spkId: parsed.spkId,
      opkId: parsed.opkId,
      received: false,
      rootKey: sk,
      sendingPrivate: Uint8Array.from(spk.privateKey),
      sendingPublic: x25519Base(spk.privateKey),
      receivingPublic: null,
      sendingChain: null,
      receivingChain: null,
    },
    rng,
  );
  const plaintext = session.decrypt(parsed.message);
  return { session, plaintext, usedOpkId: parsed.opkId };
}
