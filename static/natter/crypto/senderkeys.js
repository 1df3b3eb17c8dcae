// Sender Keys for groups (docs/crypto.md §6).

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
  concat,
  ed25519SeedKeypair,
  fromBase64,
  readU32,
  sign,
  toBase64,
  u32,
  utf8,
  verify,
} from "./primitives.js";
import { expandMessageKey, kdfCk } from "./session.js";

export const SK_MAX_SKIP = 1000;
export const SK_MAX_STORED_SKIPPED = 2000;
const VERSION = 0x01;
const SK_LABEL = utf8("natter-sk-v1");
const GROUP_LABEL = utf8("natter-group-v1");
const PREFIX_LENGTH = 9;
const TAG_LENGTH = 16;
const SIG_LENGTH = 64;

/** AD = "natter-group-v1" || 0x00 || utf8(conversation_id) || 0x00 || utf8(sender_device_id). */
export function groupAd(conversationId, senderDeviceId) {
  return concat(GROUP_LABEL, [0], utf8(String(conversationId)), [0], utf8(String(senderDeviceId)));
}

function parseGroupBody(body) {
  const b = asBytes(body, "body");
  if (b.length < PREFIX_LENGTH + TAG_LENGTH + SIG_LENGTH) {
    throw new MalformedMessage("group body too short");
  }
  if (b[0] !== VERSION) throw new MalformedMessage(`unknown group body version ${b[0]}`);
  const signedLength = b.length - SIG_LENGTH;
  return {
    keyId: readU32(b, 1),
    iteration: readU32(b, 5),
    ciphertext: b.subarray(PREFIX_LENGTH, signedLength),
    signed: b.subarray(0, signedLength),
    signature: b.slice(signedLength),
  };
}

/** The key id of a group body (to pick the receiver), or throws MalformedMessage. */
export function groupBodyKeyId(body) {
  return parseGroupBody(body).keyId;
}

/** The iteration of a group body. */
export function groupBodyIteration(body) {
  return parseGroupBody(body).iteration;
}

function b64(x) {
  return typeof x === "string" ? fromBase64(x) : Uint8Array.from(asBytes(x));
}

/** A device's own sender key for one group. */
export class SenderKey {
  constructor({ keyId, iteration, chainKey, signingSeed }) {
    if (!Number.isInteger(keyId) || keyId < 0 || keyId > 0xffffffff) {
      throw new CryptoError("sender key id must be a u32");
    }
    this.keyId = keyId;
    this.iteration = iteration;
    this.chainKey = Uint8Array.from(chainKey);
    this.signingSeed = Uint8Array.from(signingSeed);
    const kp = ed25519SeedKeypair(this.signingSeed);
    this.signingPublic = kp.publicKey;
    this.signingSecret = kp.secretKey;
  }

  /** Draws: key_id = u32 of bytes(4), chain_key = bytes(32), signing_seed = bytes(32). */
  static create(rng = new SystemRandom()) {
    const keyId = readU32(rng.bytes(4), 0);
    const chainKey = rng.bytes(32);
    const signingSeed = rng.bytes(32);
    return new SenderKey({ keyId, iteration: 0, chainKey, signingSeed });
  }

  /** {key_id, iteration, chain_key, signing_key}: the chain key at the current iteration (bytes). */
  distribution() {
    return {
      key_id: this.keyId,
      iteration: this.iteration,
      chain_key: Uint8Array.from(this.chainKey),
      signing_key: Uint8Array.from(this.signingPublic),
    };
  }

  /** The `sender_key` content (§7) for a conversation, base64 fields. */
  distributionContent(conversationId) {
    return {
      type: "sender_key",
      conversation: conversationId,
      key_id: this.keyId,
      iteration: this.iteration,
      chain_key: toBase64(this.chainKey),
      signing_key: toBase64(this.signingPublic),
    };
  }

  /** Returns the group body (Uint8Array) and advances the chain. */
  encrypt(plaintext, conversationId, senderDeviceId) {
    const pt = typeof plaintext === "string" ? utf8(plaintext) : asBytes(plaintext, "plaintext");
    const [mk, nextCk] = kdfCk(this.chainKey);
    const [key, nonce] = expandMessageKey(mk, SK_LABEL);
    const ad = groupAd(conversationId, senderDeviceId);
    const signed = concat(
      [VERSION],
      u32(this.keyId),
      u32(this.iteration),
      aeadEncrypt(key, nonce, pt, ad),
    );
    const body = concat(signed, sign(this.signingSecret, signed));
    this.chainKey = nextCk;
    this.iteration += 1;
    return body;
  }

  toJSON() {
    return {
      key_id: this.keyId,
      iteration: this.iteration,
      chain_key: toBase64(this.chainKey),
      signing_seed: toBase64(this.signingSeed),
    };
  }

  static fromJSON(obj) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    return new SenderKey({
      keyId: o.key_id,
      iteration: o.iteration,
      chainKey: fromBase64(o.chain_key),
      signingSeed: fromBase64(o.signing_seed),
    });
  }
}

/** The receiving side of one sender key (one key id of one sender device). */
export class SenderKeyReceiver {
  constructor({ keyId, iteration, chainKey, signingKey, skipped = new Map() }) {
    this.keyId = keyId;
    this.iteration = iteration;
    this.chainKey = Uint8Array.from(chainKey);
    this.signingKey = Uint8Array.from(signingKey);
    this.skipped = skipped; // iteration -> message key, oldest first
    if (this.chainKey.length !== 32) throw new MalformedMessage("chain key must be 32 bytes");
    if (this.signingKey.length !== 32) throw new MalformedMessage("signing key must be 32 bytes");
  }

  /** From a distribution {key_id, iteration, chain_key, signing_key} (bytes or base64). */
  static fromDistribution(d) {
    if (
      !d ||
      !Number.isInteger(d.key_id) ||
      !Number.isInteger(d.iteration) ||
      d.key_id < 0 ||
      d.key_id > 0xffffffff ||
      d.iteration < 0 ||
      d.iteration > 0xffffffff
    ) {
      throw new MalformedMessage("bad sender key distribution");
    }
    return new SenderKeyReceiver({
      keyId: d.key_id,
      iteration: d.iteration,
      chainKey: b64(d.chain_key),
      signingKey: b64(d.signing_key),
    });
  }

  /**
   * Verify the signature, derive the message key and decrypt. Transactional:
   * nothing changes unless the body decrypts.
   */
  decrypt(body, conversationId, senderDeviceId) {
    const m = parseGroupBody(body);
    if (m.keyId !== this.keyId) {
      throw new DecryptError(`group body is for sender key ${m.keyId}, not ${this.keyId}`);
    }
    if (!verify(this.signingKey, m.signed, m.signature)) {
      throw new BadSignature("group body signature does not verify");
    }
    const ad = groupAd(conversationId, senderDeviceId);
    const open = (mk) => {
      const [key, nonce] = expandMessageKey(mk, SK_LABEL);
      return aeadDecrypt(key, nonce, m.ciphertext, ad);
    };
    if (this.skipped.has(m.iteration)) {
      const plaintext = open(this.skipped.get(m.iteration));
      this.skipped.delete(m.iteration);
      return plaintext;
    }
    if (m.iteration < this.iteration) {
      throw new DuplicateMessage(`iteration ${m.iteration} was already used or is not kept`);
    }
    if (m.iteration - this.iteration > SK_MAX_SKIP) {
      throw new TooManySkipped(`iteration ${m.iteration} would skip more than ${SK_MAX_SKIP} keys`);
    }
    const skipped = new Map(this.skipped);
    let ck = this.chainKey;
    let it = this.iteration;
    while (it < m.iteration) {
      const [mk, nextCk] = kdfCk(ck);
      skipped.set(it, mk);
      if (skipped.size > SK_MAX_STORED_SKIPPED) skipped.delete(skipped.keys().next().value);
      ck = nextCk;
      it += 1;
    }
    const [mk, nextCk] = kdfCk(ck);
    const plaintext = open(mk);
    this.chainKey = nextCk;
    this.iteration = it + 1;
    this.skipped = skipped;
    return plaintext;
  }

  toJSON() {
    return {
      key_id: this.keyId,
      iteration: this.iteration,
      chain_key: toBase64(this.chainKey),
      signing_key: toBase64(this.signingKey),
      skipped: [...this.skipped].map(([it, mk]) => [it, toBase64(mk)]),
    };
  }

  static fromJSON(obj) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    const skipped = new Map();
    for (const [it, mk] of o.skipped || []) skipped.set(it, fromBase64(mk));
    return new SenderKeyReceiver({
      keyId: o.key_id,
      iteration: o.iteration,
      chainKey: fromBase64(o.chain_key),
      signingKey: fromBase64(o.signing_key),
      skipped,
    });
  }
}

export const KEPT_KEY_IDS = 2;

/**
 * The receivers of one sender device in one group: the two most recent key
 * ids, so bodies sent just before a rotation still open (§6).
 */
export class SenderKeyRing {
  constructor(receivers = []) {
    this.receivers = new Map(); // key id -> SenderKeyReceiver, oldest first
    for (const r of receivers) this.receivers.set(r.keyId, r);
  }

  /**
   * Keep a new key (dropping the oldest beyond two). A key id already held is
   * ignored, so a repeated distribution cannot reopen used iterations.
   * Returns true when added.
   */
  addDistribution(distribution) {
    const receiver = SenderKeyReceiver.fromDistribution(distribution);
    if (this.receivers.has(receiver.keyId)) return false;
    this.receivers.set(receiver.keyId, receiver);
    while (this.receivers.size > KEPT_KEY_IDS) {
      this.receivers.delete(this.receivers.keys().next().value);
    }
    return true;
  }

  /** Held key ids, oldest first. */
  get keyIds() {
    return [...this.receivers.keys()];
  }

  decrypt(body, conversationId, senderDeviceId) {
    const keyId = groupBodyKeyId(body);
    const receiver = this.receivers.get(keyId);
    if (!receiver) throw new DecryptError(`no sender key ${keyId} from this device`);
    return receiver.decrypt(body, conversationId, senderDeviceId);
  }

  toJSON() {
    return { receivers: [...this.receivers.values()].map((r) => r.toJSON()) };
  }

  static fromJSON(obj) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    return new SenderKeyRing((o.receivers || []).map((r) => SenderKeyReceiver.fromJSON(r)));
  }
}
