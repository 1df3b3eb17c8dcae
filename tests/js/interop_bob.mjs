#!/usr/bin/env node
// Bob for the Python interop test: reads one JSON object on stdin
//   {"bob_seed": hex, "spk_id": int, "opk_ids": [int...],
//    "messages": [{"envelope": str, "body": hex}...], "reply": hex}
// derives Bob's keys from DeterministicRandom(bob_seed) in the docs/crypto.md §1
// draw order (identity, signed prekey, one-time prekeys in order), decrypts the
// messages in order, encrypts `reply`, and prints
//   {"plaintexts": [hex...], "reply": {"envelope": str, "body": hex}}
// Exit status 1 with the error on stderr on any failure.

import {
  DeterministicRandom,
  IdentityKeyPair,
  PreKey,
  SignedPreKey,
  acceptPrekeyMessage,
  fromHex,
  parsePrekeyMessage,
  toHex,
} from "../../static/natter/crypto/index.js";

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function main() {
  const input = JSON.parse(await readStdin());
  const rng = new DeterministicRandom(fromHex(input.bob_seed));
  const identity = IdentityKeyPair.generate(rng);
  const spk = SignedPreKey.generate(identity, input.spk_id, rng);
  const signedPrekeys = new Map([[spk.keyId, spk]]);
  const oneTimePrekeys = new Map();
  for (const id of input.opk_ids || []) oneTimePrekeys.set(id, PreKey.generate(id, rng));

  let session = null;
  const plaintexts = [];
  for (const { envelope, body: bodyHex } of input.messages) {
    const body = fromHex(bodyHex);
    let plaintext;
    if (envelope === "prekey" && (session === null || !session.matchesPrekeyMessage(parsePrekeyMessage(body)))) {
      const r = acceptPrekeyMessage(identity, signedPrekeys, oneTimePrekeys, body, rng);
      session = r.session;
      plaintext = r.plaintext;
      if (r.usedOpkId !== null) oneTimePrekeys.delete(r.usedOpkId);
    } else if (envelope === "prekey" || envelope === "message") {
      if (session === null) throw new Error("a message envelope before any session");
      plaintext = session.decrypt(body, envelope);
    } else {
      throw new Error(`unknown envelope ${envelope}`);
    }
    plaintexts.push(toHex(plaintext));
  }
  if (session === null) throw new Error("no messages, so no session to reply with");
  const reply = session.encrypt(fromHex(input.reply ?? ""));
  process.stdout.write(
    JSON.stringify({ plaintexts, reply: { envelope: reply.envelope, body: toHex(reply.body) } }) + "\n",
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${e && e.name ? e.name : "Error"}: ${e && e.message ? e.message : e}\n`);
    process.exit(1);
  },
);
