// Content encoding (docs/crypto.md §7): UTF-8 JSON, padded with 0x80 0x00… to a
// multiple of 64 bytes (at least one padding byte).

import { MalformedMessage, asBytes, fromUtf8, utf8 } from "./primitives.js";

export const PAD_BLOCK = 64;

export function pad(bytes) {
  const b = asBytes(bytes);
  const total = (Math.floor(b.length / PAD_BLOCK) + 1) * PAD_BLOCK;
  const out = new Uint8Array(total);
  out.set(b, 0);
  out[b.length] = 0x80;
  return out;
}

export function unpad(bytes) {
  const b = asBytes(bytes);
  let i = b.length - 1;
  while (i >= 0 && b[i] === 0x00) i--;
  if (i < 0 || b[i] !== 0x80) throw new MalformedMessage("bad content padding");
  return b.subarray(0, i);
}

/** JSON.stringify (compact, non-ASCII as is, like Python's separators=(",",":"), ensure_ascii=False) + padding. */
export function encodeContent(obj) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new TypeError("content must be a JSON object");
  }
  const json = JSON.stringify(obj, (key, value) => {
    if (typeof value === "number" && !Number.isFinite(value)) {
      throw new RangeError(`${value} is not JSON`);
    }
    return value;
  });
  return pad(utf8(json));
}

/** Strip the padding, decode UTF-8 and parse; MalformedMessage on any failure. */
export function decodeContent(bytes) {
  const raw = unpad(bytes);
  let value;
  try {
    value = JSON.parse(fromUtf8(raw));
  } catch (e) {
    throw new MalformedMessage("content is not UTF-8 JSON");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new MalformedMessage("content is not a JSON object");
  }
  return value;
}
