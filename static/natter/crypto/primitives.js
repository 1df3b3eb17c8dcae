// Primitives of docs/crypto.md §0–§1 on libsodium.js: keyed BLAKE2b, X25519,
// Ed25519, XChaCha20-Poly1305-IETF, the Random objects and the error classes.
// Runs unchanged in the browser (import map for "libsodium-wrappers") and Node.

import sodiumModule from "libsodium-wrappers";

await sodiumModule.ready;

/** The initialised libsodium.js object. */
export const sodium = sodiumModule;

/** Resolves once libsodium is initialised (it already is when this module has loaded). */
export async function ready() {
  await sodiumModule.ready;
  return sodiumModule;
}

// ---------------------------------------------------------------------------
// Errors

export class CryptoError extends Error {
  constructor(message) {
    super(message);
    this.name = "CryptoError";
  }
}
export class BadSignature extends CryptoError {
  constructor(message = "bad signature") {
    super(message);
    this.name = "BadSignature";
  }
}
export class DecryptError extends CryptoError {
  constructor(message = "message could not be decrypted") {
    super(message);
    this.name = "DecryptError";
  }
}
export class DuplicateMessage extends CryptoError {
  constructor(message = "message key already used") {
    super(message);
    this.name = "DuplicateMessage";
  }
}
export class TooManySkipped extends CryptoError {
  constructor(message = "too many skipped messages") {
    super(message);
    this.name = "TooManySkipped";
  }
}
export class MalformedMessage extends CryptoError {
  constructor(message = "malformed message") {
    super(message);
    this.name = "MalformedMessage";
  }
}

// ---------------------------------------------------------------------------
// Byte helpers

const textEncoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

export function utf8(s) {
  return textEncoder.encode(s);
}

export function fromUtf8(bytes) {
  return strictDecoder.decode(bytes);
}

export function toBase64(bytes) {
  return sodium.to_base64(bytes, sodium.base64_variants.ORIGINAL);
}

export function fromBase64(s) {
  if (typeof s !== "string") throw new MalformedMessage("base64 value is not a string");
  try {
    return sodium.from_base64(s, sodium.base64_variants.ORIGINAL);
  } catch (e) {
    throw new MalformedMessage("invalid base64");
  }
}

export function toHex(bytes) {
  return sodium.to_hex(bytes);
}

export function fromHex(s) {
  if (typeof s !== "string" || s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) {
    throw new MalformedMessage("invalid hex");
  }
  return sodium.from_hex(s);
}

/** Concatenate Uint8Arrays (and arrays of byte values). */
export function concat(...parts) {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** u32(x): 4 bytes, unsigned big-endian. */
export function u32(x) {
  if (!Number.isInteger(x) || x < 0 || x > 0xffffffff) {
    throw new CryptoError(`u32 out of range: ${x}`);
  }
  return new Uint8Array([(x >>> 24) & 0xff, (x >>> 16) & 0xff, (x >>> 8) & 0xff, x & 0xff]);
}

export function readU32(bytes, offset = 0) {
  return (
    ((bytes[offset] << 24) >>> 0) +
    (bytes[offset + 1] << 16) +
    (bytes[offset + 2] << 8) +
    bytes[offset + 3]
  );
}

/** Equality of two byte arrays (not secret-dependent in length). */
export function bytesEqual(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** Bytewise (unsigned, lexicographic) comparison. */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

export function asBytes(x, what = "value") {
  if (x instanceof Uint8Array) return x;
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (Array.isArray(x)) return Uint8Array.from(x);
  throw new CryptoError(`${what} must be bytes (Uint8Array)`);
}

// ---------------------------------------------------------------------------
// KDF: H(key, msg, n), keyed BLAKE2b (§0)

/**
 * H(key, msg, n): BLAKE2b with output length n, keyed with `key`, or unkeyed
 * when `key` is empty (or null).
 */
export function kdf(key, msg, n) {
  const k = key == null ? null : asBytes(key, "key");
  const m = typeof msg === "string" ? utf8(msg) : asBytes(msg, "msg");
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new CryptoError(`bad output length ${n}`);
  if (k && k.length > 64) throw new CryptoError("key longer than 64 bytes");
  return sodium.crypto_generichash(n, m, k && k.length ? k : null);
}

// ---------------------------------------------------------------------------
// Randomness (§1)

export class SystemRandom {
  bytes(n) {
    return sodium.randombytes_buf(n);
  }
}

/** k-th call returns H(seed, u32(k), n). */
export class DeterministicRandom {
  constructor(seed) {
    const s = typeof seed === "string" ? fromHex(seed) : asBytes(seed, "seed");
    if (s.length !== 32) throw new CryptoError("DeterministicRandom seed must be 32 bytes");
    this.seed = Uint8Array.from(s);
    this.counter = 0;
  }

  bytes(n) {
    if (!Number.isInteger(n) || n < 1 || n > 64) {
      throw new CryptoError(`DeterministicRandom draws 1..64 bytes, not ${n}`);
    }
    const out = kdf(this.seed, u32(this.counter), n);
    this.counter += 1;
    return out;
  }
}

// ---------------------------------------------------------------------------
// X25519 / Ed25519 / AEAD

function isAllZero(b) {
  let d = 0;
  for (let i = 0; i < b.length; i++) d |= b[i];
  return d === 0;
}

export function x25519Base(priv) {
  return sodium.crypto_scalarmult_base(priv);
}

/** DH(priv, pub): X25519; an all-zero result is an error. */
export function dh(priv, pub) {
  if (!(pub instanceof Uint8Array) || pub.length !== 32) {
    throw new MalformedMessage("X25519 public key must be 32 bytes");
  }
  let out;
  try {
    out = sodium.crypto_scalarmult(priv, pub);
  } catch (e) {
    throw new CryptoError("X25519 failed (low-order public key)");
  }
  if (isAllZero(out)) throw new CryptoError("X25519 produced all zeros (low-order public key)");
  return out;
}

export function ed25519SeedKeypair(seed) {
  const kp = sodium.crypto_sign_seed_keypair(seed);
  return { publicKey: kp.publicKey, secretKey: kp.privateKey };
}

export function ed25519PkToX25519(pk) {
  if (!(pk instanceof Uint8Array) || pk.length !== 32) {
    throw new MalformedMessage("Ed25519 public key must be 32 bytes");
  }
  try {
    return sodium.crypto_sign_ed25519_pk_to_curve25519(pk);
  } catch (e) {
    throw new MalformedMessage("invalid Ed25519 public key");
  }
}

export function ed25519SkToX25519(sk) {
  return sodium.crypto_sign_ed25519_sk_to_curve25519(sk);
}

export function sign(secretKey, msg) {
  return sodium.crypto_sign_detached(msg, secretKey);
}

export function verify(publicKey, msg, signature) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) return false;
  if (!(signature instanceof Uint8Array) || signature.length !== 64) return false;
  try {
    return sodium.crypto_sign_verify_detached(signature, msg, publicKey);
  } catch (e) {
    return false;
  }
}

export function aeadEncrypt(key, nonce, plaintext, ad) {
  return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key);
}

/** Returns the plaintext, or throws DecryptError. */
export function aeadDecrypt(key, nonce, ciphertext, ad) {
  try {
    return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, key);
  } catch (e) {
    throw new DecryptError();
  }
}
