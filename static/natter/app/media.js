// Attachments (docs/crypto.md §10): a fresh key per file, libsodium secretstream
// in 64 KiB chunks, the blob's SHA-256 checked both ways, and a small JPEG
// thumbnail that travels inside the end-to-end encrypted message.

import { sodium } from "../crypto/index.js";

export const CHUNK = 65536;
const ABYTES = 17; // crypto_secretstream_xchacha20poly1305_ABYTES
const HEADER = 24; // crypto_secretstream_xchacha20poly1305_HEADERBYTES
export const THUMBNAIL_MAX_BYTES = 8 * 1024;

export class MediaError extends Error {
  constructor(message) {
    super(message);
    this.name = "MediaError";
  }
}

/** Encrypt a File/Blob: {blob, key, sha256 (hex of the blob), size (plaintext bytes)}. */
export async function encryptFile(file) {
  const plain = new Uint8Array(await file.arrayBuffer());
  const key = sodium.crypto_secretstream_xchacha20poly1305_keygen();
  const { state, header } = sodium.crypto_secretstream_xchacha20poly1305_init_push(key);
  const parts = [header];
  const TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE;
  const TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL;
  // An empty file is one empty FINAL chunk.
  for (let off = 0; off < plain.length || off === 0; off += CHUNK) {
    const chunk = plain.subarray(off, off + CHUNK);
    const last = off + CHUNK >= plain.length;
    parts.push(
      sodium.crypto_secretstream_xchacha20poly1305_push(state, chunk, null, last ? TAG_FINAL : TAG_MESSAGE),
    );
    if (last) break;
  }
  const blob = new Blob(parts, { type: "application/octet-stream" });
  const sha256 = await sha256Hex(new Uint8Array(await blob.arrayBuffer()));
  return { blob, key, sha256, size: plain.length };
}

/** Check and decrypt a downloaded blob; FINAL must come exactly on the last chunk. */
export async function decryptBlob(buffer, key, expectedSha256) {
  const data = new Uint8Array(buffer);
  const digest = await sha256Hex(data);
  if (expectedSha256 && digest !== String(expectedSha256).toLowerCase()) {
    throw new MediaError("the download does not match its checksum");
  }
  if (data.length < HEADER + ABYTES) throw new MediaError("the file is truncated");
  const state = sodium.crypto_secretstream_xchacha20poly1305_init_pull(data.subarray(0, HEADER), key);
  const TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL;
  const out = [];
  let off = HEADER;
  while (off < data.length) {
    const end = Math.min(off + CHUNK + ABYTES, data.length);
    const res = sodium.crypto_secretstream_xchacha20poly1305_pull(state, data.subarray(off, end), null);
    if (!res) throw new MediaError("the file could not be decrypted");
    off = end;
    const isFinal = res.tag === TAG_FINAL;
    if (isFinal !== (off === data.length)) throw new MediaError("the file is truncated or extended");
    out.push(res.message);
  }
  return out;
}

// ---------------------------------------------------------------------------
// SHA-256: WebCrypto where the page is a secure context (https, localhost);
// a small fallback elsewhere, since crypto.subtle is missing on plain http.

export async function sha256Hex(bytes) {
  let digest;
  if (globalThis.crypto && crypto.subtle) {
    digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  } else {
    digest = sha256Fallback(bytes);
  }
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
]);

export function sha256Fallback(bytes) {
  const len = bytes.length;
  const padded = new Uint8Array(((len + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[len] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(len / 0x20000000));
  view.setUint32(padded.length - 4, (len << 3) >>> 0);
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) >>> 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) >>> 0;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
  const out = new Uint8Array(32);
  const ov = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) ov.setUint32(i * 4, h[i]);
  return out;
}

// ---------------------------------------------------------------------------
// Thumbnails

/** {thumbnail (base64 JPEG ≤ 8 KiB), width, height} of an image file, or null. */
export async function makeThumbnail(file) {
  if (!file.type.startsWith("image/")) return null;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    return null; // not an image the browser can decode (HEIC, SVG…): send as a file
  }
  const { width, height } = bitmap;
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  // Biggest first: a sharper preview while it still fits the budget.
  for (const side of [320, 240, 160, 96, 64]) {
    const scale = Math.min(1, side / Math.max(width, height));
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    ctx.fillStyle = "#fff"; // JPEG has no alpha: transparent PNGs get a white ground
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    for (const quality of [0.7, 0.5, 0.35]) {
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
      if (blob && blob.size <= THUMBNAIL_MAX_BYTES) {
        bitmap.close?.();
        const bytes = new Uint8Array(await blob.arrayBuffer());
        return { thumbnail: sodium.to_base64(bytes, sodium.base64_variants.ORIGINAL), width, height };
      }
    }
  }
  bitmap.close?.();
  return { thumbnail: null, width, height };
}
