// Safety numbers (docs/crypto.md §8).

import { asBytes, compareBytes, concat, fromBase64, kdf, utf8 } from "./primitives.js";

export const FINGERPRINT_ROUNDS = 1024;
const FP_LABEL = utf8("natter-fp-v1");

function keyBytes(k) {
  return typeof k === "string" ? fromBase64(k) : asBytes(k, "identity key");
}

/** Compare strings by Unicode code point (as Python does), not UTF-16 unit. */
function compareCodePoints(a, b) {
  return compareBytes(utf8(a), utf8(b));
}

/**
 * The 30 digits of one user: fp_0 = H("", "natter-fp-v1" || utf8(user_id) || 0x00 || keys, 64),
 * fp_{i+1} = H("", fp_i || keys, 64), FINGERPRINT_ROUNDS hashes in all; the first
 * 30 bytes of the last make 6 big-endian 5-byte chunks, each mod 100000.
 * `keys`: the identity keys (bytes or base64) of the user's active devices.
 */
export function fingerprintDigits(userId, keys) {
  const sorted = keys.map(keyBytes).sort(compareBytes);
  const all = concat(...sorted);
  let fp = kdf(null, concat(FP_LABEL, utf8(String(userId)), [0], all), 64);
  for (let i = 1; i < FINGERPRINT_ROUNDS; i++) fp = kdf(null, concat(fp, all), 64);
  let digits = "";
  for (let c = 0; c < 6; c++) {
    let v = 0;
    for (let j = 0; j < 5; j++) v = v * 256 + fp[c * 5 + j];
    digits += String(v % 100000).padStart(5, "0");
  }
  return digits;
}

/** 60 digits as 12 groups of 5 separated by spaces; the same on both sides. */
export function safetyNumber(userA, keysA, userB, keysB) {
  const a = fingerprintDigits(userA, keysA);
  const b = fingerprintDigits(userB, keysB);
  const digits = compareCodePoints(String(userA), String(userB)) <= 0 ? a + b : b + a;
  return digits.match(/.{5}/g).join(" ");
}
