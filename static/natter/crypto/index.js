// Natter end-to-end encryption for the browser (and Node): docs/crypto.md.
// Import as an ES module; the bare specifier "libsodium-wrappers" is resolved
// by the page's import map (browser) or node_modules (Node).

export {
  sodium,
  ready,
  CryptoError,
  BadSignature,
  DecryptError,
  DuplicateMessage,
  TooManySkipped,
  MalformedMessage,
  kdf,
  SystemRandom,
  DeterministicRandom,
  toBase64,
  fromBase64,
  toHex,
  fromHex,
  utf8,
  fromUtf8,
  concat,
  u32,
  readU32,
  bytesEqual,
  compareBytes,
} from "./primitives.js";
export {
  IdentityKeyPair,
  SignedPreKey,
  PreKey,
  generateOneTimePrekeys,
  verifySignedPrekey,
  Bundle,
} from "./keys.js";
export {
  MAX_SKIP,
  MAX_STORED_SKIPPED,
  kdfRk,
  kdfCk,
  expandMessageKey,
  x3dhInitiate,
  x3dhRespond,
  Session,
  parsePrekeyMessage,
  acceptPrekeyMessage,
} from "./session.js";
export {
  SenderKey,
  SenderKeyReceiver,
  SenderKeyRing,
  groupBodyKeyId,
  groupBodyIteration,
  groupAd,
} from "./senderkeys.js";
export { safetyNumber, fingerprintDigits } from "./safety.js";
export { encodeContent, decodeContent, pad, unpad } from "./content.js";
