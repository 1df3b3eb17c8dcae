// Keys a device holds (docs/crypto.md §2) and the claimed bundle (§3).

import {
  BadSignature,
  CryptoError,
  MalformedMessage,
  SystemRandom,
  asBytes,
  ed25519PkToX25519,
  ed25519SeedKeypair,
  ed25519SkToX25519,
  fromBase64,
  sign,
  toBase64,
  verify,
  x25519Base,
} from "./primitives.js";

function checkKeyId(keyId) {
  if (!Number.isInteger(keyId) || keyId < 1 || keyId > 0xffffffff) {
    throw new CryptoError(`key id must be a u32 >= 1, not ${keyId}`);
  }
  return keyId;
}

function b64(x) {
  if (typeof x !== "string") throw new MalformedMessage("bundle keys must be base64 strings");
  return fromBase64(x);
}

/** Ed25519 identity key, from a 32-byte seed (draw: seed = bytes(32)). */
export class IdentityKeyPair {
  constructor(seed) {
    const s = asBytes(seed, "seed");
    if (s.length !== 32) throw new CryptoError("identity seed must be 32 bytes");
    this.seed = Uint8Array.from(s);
    const kp = ed25519SeedKeypair(this.seed);
    this.publicKey = kp.publicKey;
    this.secretKey = kp.secretKey;
    this._xPriv = null;
    this._xPub = null;
  }

  static generate(rng = new SystemRandom()) {
    return new IdentityKeyPair(rng.bytes(32));
  }

  static fromSeed(seed) {
    return new IdentityKeyPair(seed);
  }

  /** IKx private half (crypto_sign_ed25519_sk_to_curve25519). */
  get x25519PrivateKey() {
    if (!this._xPriv) this._xPriv = ed25519SkToX25519(this.secretKey);
    return this._xPriv;
  }

  /** IKx public half (crypto_sign_ed25519_pk_to_curve25519). */
  get x25519PublicKey() {
    if (!this._xPub) this._xPub = ed25519PkToX25519(this.publicKey);
    return this._xPub;
  }

  sign(msg) {
    return sign(this.secretKey, asBytes(msg, "msg"));
  }

  toJSON() {
    return { seed: toBase64(this.seed), public: toBase64(this.publicKey) };
  }

  /** From toJSON() output (the shape of the Python to_dict()). */
  static fromJSON(obj) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    const pair = new IdentityKeyPair(fromBase64(o.seed));
    if (o.public !== undefined && o.public !== toBase64(pair.publicKey)) {
      throw new CryptoError("stored identity public key does not match its seed");
    }
    return pair;
  }
}

/** Signed prekey: X25519 key pair with key id and Ed25519 signature over the public key. */
export class SignedPreKey {
  constructor(keyId, privateKey, signature, publicKey = null) {
    this.keyId = checkKeyId(keyId);
    this.privateKey = Uint8Array.from(asBytes(privateKey, "privateKey"));
    if (this.privateKey.length !== 32) throw new CryptoError("prekey private key must be 32 bytes");
    this.publicKey = publicKey ? Uint8Array.from(publicKey) : x25519Base(this.privateKey);
    this.signature = Uint8Array.from(asBytes(signature, "signature"));
  }

  static generate(identity, keyId, rng = new SystemRandom()) {
    checkKeyId(keyId);
    const priv = rng.bytes(32);
    const pub = x25519Base(priv);
    return new SignedPreKey(keyId, priv, identity.sign(pub), pub);
  }

  /** The upload shape {key_id, public_key, signature} (base64). */
  toWire() {
    return {
      key_id: this.keyId,
      public_key: toBase64(this.publicKey),
      signature: toBase64(this.signature),
    };
  }

  toJSON() {
    return {
      key_id: this.keyId,
      private: toBase64(this.privateKey),
      public: toBase64(this.publicKey),
      signature: toBase64(this.signature),
    };
  }

  static fromJSON(obj) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    return new SignedPreKey(o.key_id, fromBase64(o.private), fromBase64(o.signature));
  }
}

/** One-time prekey: X25519 key pair with a key id. */
export class PreKey {
  constructor(keyId, privateKey, publicKey = null) {
    this.keyId = checkKeyId(keyId);
    this.privateKey = Uint8Array.from(asBytes(privateKey, "privateKey"));
    if (this.privateKey.length !== 32) throw new CryptoError("prekey private key must be 32 bytes");
    this.publicKey = publicKey ? Uint8Array.from(publicKey) : x25519Base(this.privateKey);
  }

  static generate(keyId, rng = new SystemRandom()) {
    checkKeyId(keyId);
    return new PreKey(keyId, rng.bytes(32));
  }

  /** The upload shape {key_id, public_key} (base64). */
  toWire() {
    return { key_id: this.keyId, public_key: toBase64(this.publicKey) };
  }

  toJSON() {
    return {
      key_id: this.keyId,
      private: toBase64(this.privateKey),
      public: toBase64(this.publicKey),
    };
  }

  static fromJSON(obj) {
    const o = typeof obj === "string" ? JSON.parse(obj) : obj;
    return new PreKey(o.key_id, fromBase64(o.private));
  }
}

/** `count` one-time prekeys with ids startId, startId+1, … drawn in key-id order. */
export function generateOneTimePrekeys(startId, count, rng = new SystemRandom()) {
  const out = [];
  for (let i = 0; i < count; i++) out.push(PreKey.generate(startId + i, rng));
  return out;
}

export function verifySignedPrekey(identityPublic, prekeyPublic, signature) {
  return verify(asBytes(identityPublic), asBytes(prekeyPublic), asBytes(signature));
}

/** A claimed prekey bundle of one remote device. */
export class Bundle {
  constructor({ deviceId = null, identityKey, signedPrekey, oneTimePrekey = null }) {
    this.deviceId = deviceId;
    this.identityKey = Uint8Array.from(identityKey);
    this.signedPrekey = {
      keyId: signedPrekey.keyId,
      publicKey: Uint8Array.from(signedPrekey.publicKey),
      signature: Uint8Array.from(signedPrekey.signature),
    };
    this.oneTimePrekey = oneTimePrekey
      ? { keyId: oneTimePrekey.keyId, publicKey: Uint8Array.from(oneTimePrekey.publicKey) }
      : null;
    if (this.identityKey.length !== 32) throw new MalformedMessage("identity key must be 32 bytes");
    if (this.signedPrekey.publicKey.length !== 32) {
      throw new MalformedMessage("signed prekey must be 32 bytes");
    }
    if (this.signedPrekey.signature.length !== 64) {
      throw new MalformedMessage("signed prekey signature must be 64 bytes");
    }
    if (this.oneTimePrekey && this.oneTimePrekey.publicKey.length !== 32) {
      throw new MalformedMessage("one-time prekey must be 32 bytes");
    }
    checkKeyId(this.signedPrekey.keyId);
    if (this.oneTimePrekey) checkKeyId(this.oneTimePrekey.keyId);
  }

  /** From the PROTOCOL wire shape (standard base64 with padding). */
  static fromWire(obj) {
    try {
      return Bundle._fromWire(obj);
    } catch (e) {
      if (e instanceof MalformedMessage) throw e;
      throw new MalformedMessage(`malformed key bundle: ${e.message}`);
    }
  }

  static _fromWire(obj) {
    if (!obj || typeof obj !== "object" || !obj.signed_prekey) {
      throw new MalformedMessage("bundle must be an object with a signed_prekey");
    }
    const spk = obj.signed_prekey;
    const opk = obj.one_time_prekey;
    return new Bundle({
      deviceId: obj.device_id ?? null,
      identityKey: b64(obj.identity_key),
      signedPrekey: {
        keyId: spk.key_id,
        publicKey: b64(spk.public_key),
        signature: b64(spk.signature),
      },
      oneTimePrekey: opk ? { keyId: opk.key_id, publicKey: b64(opk.public_key) } : null,
    });
  }

  /** A bundle from local key objects (tests, and the vectors). */
  static fromKeys(identityPublic, signedPrekey, oneTimePrekey = null, deviceId = null) {
    return new Bundle({
      deviceId,
      identityKey: identityPublic,
      signedPrekey: {
        keyId: signedPrekey.keyId,
        publicKey: signedPrekey.publicKey,
        signature: signedPrekey.signature,
      },
      oneTimePrekey: oneTimePrekey
        ? { keyId: oneTimePrekey.keyId, publicKey: oneTimePrekey.publicKey }
        : null,
    });
  }

  toWire() {
    return {
      device_id: this.deviceId,
      identity_key: toBase64(this.identityKey),
      signed_prekey: {
        key_id: this.signedPrekey.keyId,
        public_key: toBase64(this.signedPrekey.publicKey),
        signature: toBase64(this.signedPrekey.signature),
      },
      one_time_prekey: this.oneTimePrekey
        ? { key_id: this.oneTimePrekey.keyId, public_key: toBase64(this.oneTimePrekey.publicKey) }
        : null,
    };
  }

  /** Throws BadSignature unless the signed prekey's signature verifies. */
  verify() {
    if (
      !verifySignedPrekey(this.identityKey, this.signedPrekey.publicKey, this.signedPrekey.signature)
    ) {
      throw new BadSignature("signed prekey signature does not verify");
    }
  }
}
