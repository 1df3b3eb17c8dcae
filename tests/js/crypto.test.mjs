// node --test tests/js/ — the browser crypto (static/natter/crypto/) against
// docs/crypto.md and the shared vectors in tests/vectors/crypto.json.

import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import {
  BadSignature,
  Bundle,
  CryptoError,
  DecryptError,
  DeterministicRandom,
  DuplicateMessage,
  IdentityKeyPair,
  MAX_SKIP,
  MAX_STORED_SKIPPED,
  MalformedMessage,
  PreKey,
  SenderKey,
  SenderKeyReceiver,
  SenderKeyRing,
  Session,
  SignedPreKey,
  SystemRandom,
  TooManySkipped,
  acceptPrekeyMessage,
  decodeContent,
  encodeContent,
  fromBase64,
  fromHex,
  fromUtf8,
  generateOneTimePrekeys,
  groupBodyKeyId,
  kdf,
  parsePrekeyMessage,
  ready,
  safetyNumber,
  toBase64,
  toHex,
  utf8,
  verifySignedPrekey,
  x3dhInitiate,
  x3dhRespond,
} from "../../static/natter/crypto/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const VECTORS_PATH = process.env.NATTER_CRYPTO_VECTORS || join(here, "..", "vectors", "crypto.json");
const vectors = existsSync(VECTORS_PATH) ? JSON.parse(readFileSync(VECTORS_PATH, "utf8")) : null;
const noVectors = vectors ? false : "tests/vectors/crypto.json not present";

await ready();

const seed = (b) => new Uint8Array(32).fill(b);
const bytes = (x) => (typeof x === "string" ? fromHex(x) : x);

function deviceKeys(rng, spkId, opkIds) {
  const identity = IdentityKeyPair.generate(rng);
  const spk = SignedPreKey.generate(identity, spkId, rng);
  const opks = opkIds.map((id) => PreKey.generate(id, rng));
  return { identity, spk, opks };
}

/** Alice and Bob with an established pair of sessions (Bob decrypted Alice's first message). */
function pair({ aliceSeed = seed(1), bobSeed = seed(2), opk = true } = {}) {
  const ra = new DeterministicRandom(aliceSeed);
  const rb = new DeterministicRandom(bobSeed);
  const alice = IdentityKeyPair.generate(ra);
  const bob = deviceKeys(rb, 7, [11, 12]);
  const bundle = Bundle.fromKeys(bob.identity.publicKey, bob.spk, opk ? bob.opks[0] : null);
  const sa = Session.initiate(alice, bundle, ra);
  const first = sa.encrypt(utf8("first"));
  const r = acceptPrekeyMessage(
    bob.identity,
    new Map([[7, bob.spk]]),
    new Map(bob.opks.map((k) => [k.keyId, k])),
    first.body,
    rb,
  );
  assert.equal(fromUtf8(r.plaintext), "first");
  return { alice, bob, sa, sb: r.session, first, ra, rb };
}

const snapshot = (s) => JSON.stringify(s.toJSON());

// ---------------------------------------------------------------------------
// Vectors

/** A dispatcher for error names in the vectors. */
function assertThrowsNamed(fn, name) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof CryptoError, `expected a CryptoError, got ${e}`);
    assert.equal(e.name, name);
    return true;
  });
}

describe("vectors", { skip: noVectors }, () => {
  test("kdf", () => {
    assert.ok(vectors.kdf.length > 0);
    for (const v of vectors.kdf) {
      assert.equal(toHex(kdf(fromHex(v.key), fromHex(v.msg), v.n)), v.out);
    }
  });

  test("random", () => {
    const r = new DeterministicRandom(fromHex(vectors.random.seed));
    assert.ok(vectors.random.draws.length > 0);
    for (const d of vectors.random.draws) assert.equal(toHex(r.bytes(d.n)), d.out);
  });

  test("x3dh", () => {
    assert.ok(vectors.x3dh.length > 0);
    for (const v of vectors.x3dh) runX3dhVector(v);
  });

  test("session steps", () => {
    runSessionVector(vectors.session);
  });

  test("sender_key", () => {
    runSenderKeyVector(vectors.sender_key);
  });

  test("content", () => {
    assert.ok(vectors.content.length > 0);
    for (const v of vectors.content) {
      assert.equal(toHex(encodeContent(v.value)), v.encoded);
      assert.deepEqual(decodeContent(fromHex(v.encoded)), v.value);
    }
  });

  test("safety_number", () => {
    assert.ok(vectors.safety_number.length > 0);
    for (const v of vectors.safety_number) {
      const ka = v.keys_a.map(bytes);
      const kb = v.keys_b.map(bytes);
      assert.equal(safetyNumber(v.user_a, ka, v.user_b, kb), v.number);
      assert.equal(safetyNumber(v.user_b, kb, v.user_a, ka), v.number);
    }
  });
});

function runX3dhVector(v) {
  // Keys from the seeds in the §1 draw order: Alice's identity, then Session.initiate's
  // ek_priv and ratchet_priv; Bob's identity, signed prekey, one-time prekey.
  const rb = new DeterministicRandom(fromHex(v.bob_seed));
  const bob = deviceKeys(rb, v.spk_id, v.opk_id === null ? [] : [v.opk_id]);
  const opk = v.opk_id === null ? null : bob.opks[0];
  assert.equal(toHex(bob.identity.publicKey), v.bob_identity_key);
  assert.equal(toHex(bob.spk.publicKey), v.spk_public);
  assert.equal(toHex(bob.spk.signature), v.spk_signature);
  assert.equal(opk ? toHex(opk.publicKey) : null, v.opk_public);
  const bundle = Bundle.fromKeys(bob.identity.publicKey, bob.spk, opk);

  const ra = new DeterministicRandom(fromHex(v.alice_seed));
  const alice = IdentityKeyPair.generate(ra);
  assert.equal(toHex(alice.publicKey), v.alice_identity_key);
  // The intermediate values, from a replay of Session.initiate's two draws.
  const probe = new DeterministicRandom(fromHex(v.alice_seed));
  probe.bytes(32);
  const ekPriv = probe.bytes(32);
  const init = x3dhInitiate(alice, bundle, ekPriv);
  assert.equal(toHex(init.ephemeralKey), v.ek_public);
  assert.deepEqual(init.dhOutputs.map(toHex), v.dh);
  assert.equal(toHex(init.sk), v.sk);
  assert.equal(toHex(init.ad), v.ad);

  const session = Session.initiate(alice, bundle, ra);
  assert.equal(toHex(session.baseKey), v.ek_public);
  assert.equal(toHex(session.sendingPublic), v.alice_ratchet_public);
  assert.equal(toHex(session.rootKey), v.alice_root_key);
  assert.equal(toHex(session.sendingChain), v.alice_sending_chain_key);

  const resp = x3dhRespond(bob.identity, bob.spk, opk, alice.publicKey, fromHex(v.ek_public));
  assert.deepEqual(resp.dhOutputs.map(toHex), v.dh);
  assert.equal(toHex(resp.sk), v.sk);
  assert.equal(toHex(resp.ad), v.ad);
}

function runSessionVector(v) {
  const ra = new DeterministicRandom(fromHex(v.alice_seed));
  const rb = new DeterministicRandom(fromHex(v.bob_seed));
  const alice = { identity: IdentityKeyPair.generate(ra), rng: ra, session: null };
  const bobKeys = deviceKeys(rb, v.spk_id, v.opk_ids);
  const bob = {
    identity: bobKeys.identity,
    rng: rb,
    session: null,
    spks: new Map([[bobKeys.spk.keyId, bobKeys.spk]]),
    opks: new Map(bobKeys.opks.map((k) => [k.keyId, k])),
  };
  const bundleOpk = v.bundle_opk_id === null ? null : bob.opks.get(v.bundle_opk_id);
  const bundle = Bundle.fromKeys(bobKeys.identity.publicKey, bobKeys.spk, bundleOpk);
  alice.session = Session.initiate(alice.identity, bundle, ra);
  const actors = { alice, bob };
  const produced = [];

  const receive = (actor, step) => {
    // A step may carry its own (e.g. tampered) body; else it names the step that produced it.
    const envelope = step.envelope ?? produced[step.ref].envelope;
    const body = step.body !== undefined ? fromHex(step.body) : produced[step.ref].body;
    const me = actors[actor];
    if (envelope === "prekey" && (me.session === null || !me.session.matchesPrekeyMessage(parsePrekeyMessage(body)))) {
      const r = acceptPrekeyMessage(me.identity, me.spks, me.opks, body, me.rng);
      me.session = r.session;
      if (r.usedOpkId !== null) me.opks.delete(r.usedOpkId);
      return r.plaintext;
    }
    return me.session.decrypt(body, envelope);
  };

  assert.ok(v.steps.length > 0);
  v.steps.forEach((step, i) => {
    const where = `step ${i} (${step.actor} ${step.action})`;
    if (step.action === "encrypt") {
      const out = actors[step.actor].session.encrypt(fromHex(step.plaintext));
      assert.equal(out.envelope, step.envelope, where);
      assert.equal(toHex(out.body), step.body, where);
      produced[i] = { envelope: out.envelope, body: out.body };
    } else if (step.action === "decrypt") {
      assert.equal(toHex(receive(step.actor, step)), step.plaintext, where);
    } else if (step.action === "decrypt_fails") {
      const me = actors[step.actor];
      const before = me.session ? snapshot(me.session) : null;
      assertThrowsNamed(() => receive(step.actor, step), step.error);
      if (before !== null) assert.equal(snapshot(me.session), before, `${where}: state changed`);
    } else {
      assert.fail(`${where}: unknown action`);
    }
  });
}

function distributionFromHex(d) {
  return {
    key_id: d.key_id,
    iteration: d.iteration,
    chain_key: fromHex(d.chain_key),
    signing_key: fromHex(d.signing_key),
  };
}

function runSenderKeyVector(v) {
  const sk = SenderKey.create(new DeterministicRandom(fromHex(v.sender_seed)));
  const conv = v.conversation_id;
  const dev = v.sender_device_id;
  const asHex = (d) => ({ ...d, chain_key: toHex(d.chain_key), signing_key: toHex(d.signing_key) });
  assert.deepEqual(asHex(sk.distribution()), v.distribution);
  // Re-create the sender's history; a receiver's distribution is taken when its
  // iteration is reached (a member joining later).
  const receivers = {};
  const pendingReceivers = Object.entries(v.receivers);
  assert.ok(v.messages.length > 0);
  v.messages.forEach((m, i) => {
    for (const [name, d] of pendingReceivers) {
      if (d.iteration === i) assert.deepEqual(asHex(sk.distribution()), d, `${name}'s distribution`);
    }
    assert.equal(toHex(sk.encrypt(fromHex(m.plaintext), conv, dev)), m.body, `message ${i}`);
  });
  for (const [name, d] of pendingReceivers) {
    receivers[name] = SenderKeyReceiver.fromDistribution(distributionFromHex(d));
  }
  assert.ok(v.steps.length > 0);
  v.steps.forEach((step, i) => {
    const where = `receiver step ${i} (${step.actor} ${step.action})`;
    const receiver = receivers[step.actor];
    const body = step.body !== undefined ? fromHex(step.body) : fromHex(v.messages[step.ref].body);
    if (step.action === "decrypt") {
      assert.equal(toHex(receiver.decrypt(body, conv, dev)), step.plaintext, where);
    } else if (step.action === "decrypt_fails") {
      const before = JSON.stringify(receiver.toJSON());
      assertThrowsNamed(() => receiver.decrypt(body, conv, dev), step.error);
      assert.equal(JSON.stringify(receiver.toJSON()), before, `${where}: state changed`);
    } else {
      assert.fail(`${where}: unknown action`);
    }
  });
}

// ---------------------------------------------------------------------------
// Primitives

describe("primitives", () => {
  test("kdf agrees with hashlib.blake2b", () => {
    const seq = (n) => Uint8Array.from({ length: n }, (_, i) => i);
    assert.equal(toHex(kdf(seq(32), utf8("natter"), 4)), "2c033ba9");
    assert.equal(
      toHex(kdf(seq(64), utf8("natter"), 64)),
      "28d8576f7af4084b7527fa8f788db2ff0f43bc31c6bccb33c5f6cf1ccff634e4282cd6896a0e481f867cf18cac5db25a3d977e35f3a8a545f8a7403461725bb4",
    );
    assert.equal(
      toHex(kdf(new Uint8Array(0), utf8("natter"), 56)),
      "3126737d3fd80da581aabb6f866e29e66339e11bc76b14aa0603774b5ad1c0b77c24fbff8088388a00c43f16c5656ad1952a0835988c5298",
    );
  });

  test("DeterministicRandom: k-th call is H(seed, u32(k), n)", () => {
    const r = new DeterministicRandom(new Uint8Array(32));
    assert.equal(toHex(r.bytes(32)), "1ec7a4cfddeff8ca3ea803c3bc37307680a98a5412cfb7cdb207a8ee596c67bd");
    assert.equal(toHex(r.bytes(4)), "34a564de");
    assert.throws(() => r.bytes(65), CryptoError);
  });

  test("SystemRandom", () => {
    const r = new SystemRandom();
    assert.equal(r.bytes(32).length, 32);
    assert.notEqual(toHex(r.bytes(16)), toHex(r.bytes(16)));
  });

  test("base64 and hex helpers", () => {
    const b = Uint8Array.from([0, 1, 2, 250, 255]);
    assert.equal(toBase64(b), "AAEC+v8=");
    assert.deepEqual(fromBase64("AAEC+v8="), b);
    assert.equal(toHex(b), "000102faff");
    assert.deepEqual(fromHex("000102faff"), b);
    assert.throws(() => fromHex("abc"), MalformedMessage);
  });

  test("error classes carry their names", () => {
    for (const E of [BadSignature, DecryptError, DuplicateMessage, TooManySkipped, MalformedMessage]) {
      const e = new E();
      assert.ok(e instanceof CryptoError && e instanceof Error);
      assert.equal(e.name, E.name);
    }
  });
});

// ---------------------------------------------------------------------------
// Keys and bundles

describe("keys", () => {
  test("identity, prekeys, JSON round trips", () => {
    const r = new DeterministicRandom(seed(3));
    const { identity, spk, opks } = deviceKeys(r, 1, [5, 6]);
    assert.equal(identity.publicKey.length, 32);
    assert.ok(verifySignedPrekey(identity.publicKey, spk.publicKey, spk.signature));
    const id2 = IdentityKeyPair.fromJSON(JSON.parse(JSON.stringify(identity)));
    assert.deepEqual(id2.publicKey, identity.publicKey);
    assert.deepEqual(id2.sign(utf8("x")), identity.sign(utf8("x")));
    const spk2 = SignedPreKey.fromJSON(JSON.parse(JSON.stringify(spk)));
    assert.deepEqual(spk2.publicKey, spk.publicKey);
    assert.deepEqual(spk2.signature, spk.signature);
    const opk2 = PreKey.fromJSON(JSON.parse(JSON.stringify(opks[1])));
    assert.equal(opk2.keyId, 6);
    assert.deepEqual(opk2.publicKey, opks[1].publicKey);
    const gen = generateOneTimePrekeys(10, 3, new SystemRandom());
    assert.deepEqual(gen.map((k) => k.keyId), [10, 11, 12]);
  });

  test("Bundle.fromWire and a bad signature", () => {
    const r = new DeterministicRandom(seed(4));
    const { identity, spk, opks } = deviceKeys(r, 1, [5]);
    const wire = {
      device_id: "d1",
      identity_key: toBase64(identity.publicKey),
      signed_prekey: { key_id: 1, public_key: toBase64(spk.publicKey), signature: toBase64(spk.signature) },
      one_time_prekey: { key_id: 5, public_key: toBase64(opks[0].publicKey) },
    };
    const b = Bundle.fromWire(wire);
    assert.deepEqual(b.toWire(), wire);
    assert.equal(Bundle.fromWire({ ...wire, one_time_prekey: null }).oneTimePrekey, null);
    const alice = IdentityKeyPair.generate(new SystemRandom());
    Session.initiate(alice, b, new SystemRandom());
    const sig = fromBase64(wire.signed_prekey.signature);
    sig[0] ^= 1;
    const bad = Bundle.fromWire({ ...wire, signed_prekey: { ...wire.signed_prekey, signature: toBase64(sig) } });
    assert.throws(() => Session.initiate(alice, bad, new SystemRandom()), BadSignature);
  });
});

// ---------------------------------------------------------------------------
// Sessions

describe("session", () => {
  test("envelopes: prekey until the initiator hears back, then message", () => {
    const { sa, sb } = pair();
    const m2 = sa.encrypt(utf8("second"));
    assert.equal(m2.envelope, "prekey");
    const p = parsePrekeyMessage(m2.body);
    assert.equal(p.spkId, 7);
    assert.equal(p.opkId, 11);
    assert.equal(fromUtf8(sb.decrypt(m2.body, "prekey")), "second");
    const back = sb.encrypt(utf8("back"));
    assert.equal(back.envelope, "message");
    assert.equal(fromUtf8(sa.decrypt(back.body)), "back");
    assert.equal(sa.encrypt(utf8("third")).envelope, "message");
  });

  test("without a one-time prekey the id is 0", () => {
    const { first } = pair({ opk: false });
    assert.equal(parsePrekeyMessage(first.body).opkId, null);
    assert.deepEqual(first.body.subarray(69, 73), new Uint8Array(4));
  });

  test("acceptPrekeyMessage does not mutate its inputs and reports the used OPK", () => {
    const rb = new DeterministicRandom(seed(9));
    const bob = deviceKeys(rb, 1, [1, 2]);
    const alice = IdentityKeyPair.generate(new SystemRandom());
    const sa = Session.initiate(alice, Bundle.fromKeys(bob.identity.publicKey, bob.spk, bob.opks[1]), new SystemRandom());
    const spks = { 1: bob.spk };
    const opks = new Map(bob.opks.map((k) => [k.keyId, k]));
    const before = JSON.stringify([spks, [...opks.values()]]);
    const { usedOpkId, plaintext } = acceptPrekeyMessage(bob.identity, spks, opks, sa.encrypt(utf8("x")).body, rb);
    assert.equal(usedOpkId, 2);
    assert.equal(fromUtf8(plaintext), "x");
    assert.equal(JSON.stringify([spks, [...opks.values()]]), before);
    // Unknown prekeys fail.
    opks.delete(2);
    assert.throws(() => acceptPrekeyMessage(bob.identity, spks, opks, sa.encrypt(utf8("y")).body, rb), DecryptError);
  });

  test("random conversations round trip, out of order, with serialisation", () => {
    const rng = new SystemRandom();
    for (let round = 0; round < 5; round++) {
      let { sa, sb } = pair({ aliceSeed: rng.bytes(32), bobSeed: rng.bytes(32) });
      const pending = { a: [], b: [] }; // messages in flight to a / to b
      let counter = 0;
      for (let i = 0; i < 200; i++) {
        const r = rng.bytes(1)[0];
        if (r < 70) {
          const text = `a->b ${counter++}`;
          pending.b.push({ text, ...sa.encrypt(utf8(text)) });
        } else if (r < 140) {
          const text = `b->a ${counter++}`;
          pending.a.push({ text, ...sb.encrypt(utf8(text)) });
        } else {
          const to = r & 1 ? "a" : "b";
          const q = pending[to];
          if (!q.length) continue;
          const [m] = q.splice(r % q.length, 1);
          const s = to === "a" ? sa : sb;
          assert.equal(fromUtf8(s.decrypt(m.body, m.envelope)), m.text);
        }
        if (r % 17 === 0) {
          sa = Session.fromJSON(JSON.parse(JSON.stringify(sa)));
          sb = Session.fromJSON(JSON.parse(JSON.stringify(sb)));
        }
      }
      for (const m of pending.a) assert.equal(fromUtf8(sa.decrypt(m.body, m.envelope)), m.text);
      for (const m of pending.b) assert.equal(fromUtf8(sb.decrypt(m.body, m.envelope)), m.text);
    }
  });

  test("toJSON/fromJSON mid-conversation gives identical bytes", () => {
    const a = pair();
    const b = pair();
    const steps = (x, sa, sb) => {
      const out = [];
      out.push(sb.encrypt(utf8("1")));
      sa.decrypt(out[0].body);
      out.push(sa.encrypt(utf8("2")));
      sb.decrypt(out[1].body);
      return out;
    };
    steps(null, a.sa, a.sb);
    steps(null, b.sa, b.sb);
    const sa2 = Session.fromJSON(JSON.stringify(a.sa.toJSON()), a.ra);
    const sb2 = Session.fromJSON(JSON.stringify(a.sb.toJSON()), a.rb);
    const o1 = steps(null, sa2, sb2);
    const o2 = steps(null, b.sa, b.sb);
    assert.deepEqual(o1.map((m) => toHex(m.body)), o2.map((m) => toHex(m.body)));
  });

  test("toJSON has the shape of the Python Session.to_dict()", () => {
    const { sa } = pair();
    assert.deepEqual(Object.keys(sa.toJSON()).sort(), [
      "associated_data", "base_key", "initiator", "opk_id", "previous_sent", "receiving_chain",
      "receiving_public", "received", "received_count", "root_key", "sending_chain",
      "sending_private", "sent", "skipped", "spk_id", "version",
    ].sort());
  });

  test("a failed decryption draws nothing from the rng", () => {
    const { sa, sb, ra } = pair();
    const back = sb.encrypt(utf8("new ratchet key"));
    const t = Uint8Array.from(back.body);
    t[t.length - 1] ^= 1;
    const calls = ra.counter;
    assert.throws(() => sa.decrypt(t), DecryptError);
    assert.equal(ra.counter, calls);
    assert.equal(fromUtf8(sa.decrypt(back.body)), "new ratchet key");
    assert.equal(ra.counter, calls + 1);
  });

  test("tampering fails with DecryptError and leaves the session unchanged", () => {
    const { sa, sb } = pair();
    const back = sb.encrypt(utf8("hello"));
    const before = snapshot(sa);
    for (let i = 0; i < back.body.length; i++) {
      const t = Uint8Array.from(back.body);
      t[i] ^= 0x40;
      assert.throws(() => sa.decrypt(t), (e) => e instanceof CryptoError);
      assert.equal(snapshot(sa), before);
    }
    assert.throws(() => sa.decrypt(back.body.subarray(0, 50)), MalformedMessage);
    assert.equal(fromUtf8(sa.decrypt(back.body)), "hello");
  });

  test("a wrong AD (other session) does not open", () => {
    const p1 = pair({ aliceSeed: seed(20) });
    const p2 = pair({ aliceSeed: seed(21) });
    const m = p1.sb.encrypt(utf8("x"));
    assert.throws(() => p2.sa.decrypt(m.body), DecryptError);
  });

  test("replays fail with DuplicateMessage", () => {
    const { sa, sb, first } = pair();
    assert.throws(() => sb.decrypt(first.body, "prekey"), DuplicateMessage);
    const m1 = sb.encrypt(utf8("1"));
    const m2 = sb.encrypt(utf8("2"));
    assert.equal(fromUtf8(sa.decrypt(m2.body)), "2");
    assert.equal(fromUtf8(sa.decrypt(m1.body)), "1"); // skipped key
    const before = snapshot(sa);
    assert.throws(() => sa.decrypt(m1.body), DuplicateMessage);
    assert.throws(() => sa.decrypt(m2.body), DuplicateMessage);
    assert.equal(snapshot(sa), before);
  });

  test("skip bounds: MAX_SKIP per header, MAX_STORED_SKIPPED kept", () => {
    const { sa, sb } = pair();
    assert.equal(MAX_SKIP, 1000);
    assert.equal(MAX_STORED_SKIPPED, 2000);
    // Bob sends MAX_SKIP + 1 messages; Alice receives only the last: too many.
    const msgs = [];
    for (let i = 0; i <= MAX_SKIP + 1; i++) msgs.push(sb.encrypt(utf8(String(i))));
    const before = snapshot(sa);
    assert.throws(() => sa.decrypt(msgs[MAX_SKIP + 1].body), TooManySkipped);
    assert.equal(snapshot(sa), before);
    // Exactly MAX_SKIP skipped is allowed.
    assert.equal(fromUtf8(sa.decrypt(msgs[MAX_SKIP].body)), String(MAX_SKIP));
    assert.equal(sa.skipped.size, MAX_SKIP);
    // More than MAX_SKIP further on in the same chain is refused again
    // (msgs[MAX_SKIP + 1] stays unread, so Alice's next expected n is MAX_SKIP + 1).
    const more = [];
    for (let i = 0; i <= MAX_SKIP + 1; i++) more.push(sb.encrypt(utf8(`m${i}`)));
    assert.throws(() => sa.decrypt(more[MAX_SKIP].body), TooManySkipped);
    assert.equal(fromUtf8(sa.decrypt(more[MAX_SKIP - 1].body)), `m${MAX_SKIP - 1}`);
    assert.equal(sa.skipped.size, 2 * MAX_SKIP); // = MAX_STORED_SKIPPED
    assert.equal(fromUtf8(sa.decrypt(more[MAX_SKIP].body)), `m${MAX_SKIP}`);
    assert.equal(fromUtf8(sa.decrypt(more[MAX_SKIP + 1].body)), `m${MAX_SKIP + 1}`);
    // One more skipped key drops the oldest stored one.
    const extra = [sb.encrypt(utf8("e0")), sb.encrypt(utf8("e1"))];
    assert.equal(fromUtf8(sa.decrypt(extra[1].body)), "e1");
    assert.equal(sa.skipped.size, MAX_STORED_SKIPPED);
    assert.throws(() => sa.decrypt(msgs[0].body), DuplicateMessage); // dropped: cannot open any more
    assert.equal(fromUtf8(sa.decrypt(msgs[1].body)), "1");
    assert.equal(fromUtf8(sa.decrypt(msgs[MAX_SKIP + 1].body)), String(MAX_SKIP + 1));
    assert.equal(fromUtf8(sa.decrypt(extra[0].body)), "e0");
  });

  test("MAX_SKIP counts both chains of one header together", () => {
    const { sa, sb } = pair();
    sa.decrypt(sb.encrypt(utf8("b0")).body); // Alice: receiving chain at Nr = 1
    for (let i = 0; i < 600; i++) sb.encrypt(utf8("lost")); // 600 Alice never gets
    sb.decrypt(sa.encrypt(utf8("a")).body); // Bob steps: his next chain has pn = 601
    const next = [];
    for (let i = 0; i < 402; i++) next.push(sb.encrypt(utf8(`n${i}`)));
    // 600 (old chain, up to pn) + 401 (new chain) = 1001 > MAX_SKIP
    const before = snapshot(sa);
    assert.throws(() => sa.decrypt(next[401].body), TooManySkipped);
    assert.equal(snapshot(sa), before);
    // 600 + 400 = 1000 is allowed
    assert.equal(fromUtf8(sa.decrypt(next[400].body)), "n400");
    assert.equal(sa.skipped.size, 1000);
  });

  test("a simultaneous start: two sessions, each side opens the other's", () => {
    const ra = new DeterministicRandom(seed(30));
    const rb = new DeterministicRandom(seed(31));
    const A = deviceKeys(ra, 1, [1]);
    const B = deviceKeys(rb, 1, [1]);
    const sa = Session.initiate(A.identity, Bundle.fromKeys(B.identity.publicKey, B.spk, B.opks[0]), ra);
    const sb = Session.initiate(B.identity, Bundle.fromKeys(A.identity.publicKey, A.spk, A.opks[0]), rb);
    const ma = sa.encrypt(utf8("from a"));
    const mb = sb.encrypt(utf8("from b"));
    assert.equal(sa.matchesPrekeyMessage(parsePrekeyMessage(mb.body)), false);
    const rB = acceptPrekeyMessage(B.identity, [B.spk], [B.opks[0]], ma.body, rb);
    const rA = acceptPrekeyMessage(A.identity, [A.spk], [A.opks[0]], mb.body, ra);
    assert.equal(fromUtf8(rB.plaintext), "from a");
    assert.equal(fromUtf8(rA.plaintext), "from b");
  });
});

// ---------------------------------------------------------------------------
// Sender keys

describe("sender keys", () => {
  const conv = "c0ffee";
  const dev = "device-1";

  test("round trip, out of order, replay, JSON", () => {
    const sk = SenderKey.create(new DeterministicRandom(seed(40)));
    sk.encrypt(utf8("before the distribution"), conv, dev);
    const rcv = SenderKeyReceiver.fromDistribution(
      JSON.parse(JSON.stringify({ ...sk.distribution(), chain_key: toBase64(sk.distribution().chain_key), signing_key: toBase64(sk.distribution().signing_key) })),
    );
    const bodies = [0, 1, 2, 3].map((i) => sk.encrypt(utf8(`g${i}`), conv, dev));
    assert.equal(groupBodyKeyId(bodies[0]), sk.keyId);
    assert.equal(fromUtf8(rcv.decrypt(bodies[2], conv, dev)), "g2");
    const rcv2 = SenderKeyReceiver.fromJSON(JSON.parse(JSON.stringify(rcv)));
    for (const r of [rcv, rcv2]) {
      assert.equal(fromUtf8(r.decrypt(bodies[0], conv, dev)), "g0");
      assert.throws(() => r.decrypt(bodies[0], conv, dev), DuplicateMessage);
      assert.throws(() => r.decrypt(bodies[2], conv, dev), DuplicateMessage);
      assert.equal(fromUtf8(r.decrypt(bodies[3], conv, dev)), "g3");
      assert.equal(fromUtf8(r.decrypt(bodies[1], conv, dev)), "g1");
    }
    const sk2 = SenderKey.fromJSON(JSON.parse(JSON.stringify(sk)));
    assert.deepEqual(sk2.encrypt(utf8("z"), conv, dev), sk.encrypt(utf8("z"), conv, dev));
  });

  test("tampering, wrong group or sender, skip bound", () => {
    const sk = SenderKey.create(new SystemRandom());
    const rcv = SenderKeyReceiver.fromDistribution(sk.distribution());
    const body = sk.encrypt(utf8("hi"), conv, dev);
    const before = JSON.stringify(rcv.toJSON());
    for (const i of [0, 1, 5, 9, 20, body.length - 70, body.length - 1]) {
      const t = Uint8Array.from(body);
      t[i] ^= 1;
      assert.throws(() => rcv.decrypt(t, conv, dev), (e) => e instanceof CryptoError && e.name !== "CryptoError");
    }
    const t = Uint8Array.from(body);
    t[20] ^= 1;
    assert.throws(() => rcv.decrypt(t, conv, dev), BadSignature);
    assert.throws(() => rcv.decrypt(body, "other", dev), DecryptError);
    assert.throws(() => rcv.decrypt(body, conv, "other"), DecryptError);
    assert.throws(() => rcv.decrypt(body.subarray(0, 60), conv, dev), MalformedMessage);
    assert.equal(JSON.stringify(rcv.toJSON()), before);
    assert.equal(fromUtf8(rcv.decrypt(body, conv, dev)), "hi");
    const skipped = [];
    for (let i = 0; i < 1001; i++) skipped.push(sk.encrypt(utf8("x"), conv, dev));
    const far = sk.encrypt(utf8("far"), conv, dev); // 1001 keys ahead of the receiver
    assert.throws(() => rcv.decrypt(far, conv, dev), TooManySkipped);
    assert.equal(fromUtf8(rcv.decrypt(skipped[1000], conv, dev)), "x"); // exactly 1000
    assert.equal(fromUtf8(rcv.decrypt(far, conv, dev)), "far");
    assert.equal(fromUtf8(rcv.decrypt(skipped[0], conv, dev)), "x");
    // a forged signing key does not verify
    const other = SenderKey.create(new SystemRandom());
    const forged = SenderKeyReceiver.fromDistribution({ ...sk.distribution(), signing_key: other.distribution().signing_key });
    assert.throws(() => forged.decrypt(sk.encrypt(utf8("y"), conv, dev), conv, dev), BadSignature);
  });
});

describe("sender key ring", () => {
  test("keeps the two most recent key ids; a repeated distribution is ignored", () => {
    const conv = "g";
    const dev = "d";
    const ring = new SenderKeyRing();
    const k1 = SenderKey.create(new SystemRandom());
    assert.equal(ring.addDistribution(k1.distribution()), true);
    const b1 = k1.encrypt(utf8("one"), conv, dev);
    assert.equal(fromUtf8(ring.decrypt(b1, conv, dev)), "one");
    assert.equal(ring.addDistribution(k1.distribution()), false);
    assert.throws(() => ring.decrypt(b1, conv, dev), DuplicateMessage);
    const k2 = SenderKey.create(new SystemRandom());
    const late = k1.encrypt(utf8("late"), conv, dev);
    ring.addDistribution(k2.distribution());
    assert.equal(fromUtf8(ring.decrypt(late, conv, dev)), "late");
    const k3 = SenderKey.create(new SystemRandom());
    ring.addDistribution(k3.distribution());
    assert.deepEqual(ring.keyIds, [k2.keyId, k3.keyId]);
    assert.throws(() => ring.decrypt(k1.encrypt(utf8("x"), conv, dev), conv, dev), DecryptError);
    const ring2 = SenderKeyRing.fromJSON(JSON.parse(JSON.stringify(ring)));
    assert.equal(fromUtf8(ring2.decrypt(k3.encrypt(utf8("three"), conv, dev), conv, dev)), "three");
  });
});

// ---------------------------------------------------------------------------
// Content and safety numbers

describe("content", () => {
  test("padding to 64-byte blocks, at least one byte", () => {
    for (const len of [0, 1, 40, 62, 63, 64, 65, 127, 128, 300]) {
      const obj = { type: "text", text: "x".repeat(Math.max(0, len - 23)) };
      const json = utf8(JSON.stringify(obj));
      const enc = encodeContent(obj);
      assert.equal(enc.length % 64, 0);
      assert.ok(enc.length > json.length);
      assert.ok(enc.length - json.length <= 64);
      assert.equal(enc[json.length], 0x80);
      assert.deepEqual(decodeContent(enc), obj);
    }
  });

  test("compact JSON with non-ASCII as is", () => {
    const enc = encodeContent({ type: "text", text: "héllo 👋" });
    const s = fromUtf8(enc.subarray(0, enc.indexOf(0x80)));
    assert.equal(s, '{"type":"text","text":"héllo 👋"}');
  });

  test("malformed content", () => {
    assert.throws(() => decodeContent(new Uint8Array(64)), MalformedMessage);
    assert.throws(() => decodeContent(Uint8Array.from([0x7b, 0x80, 0])), MalformedMessage);
    assert.throws(() => decodeContent(Uint8Array.from([0xff, 0x80])), MalformedMessage);
  });
});

describe("safety numbers", () => {
  test("12 groups of 5 digits, symmetric, changes with keys", () => {
    const k = () => IdentityKeyPair.generate(new SystemRandom()).publicKey;
    const a = [k(), k()];
    const b = [k()];
    const n = safetyNumber("alice", a, "bob", b);
    assert.match(n, /^\d{5}( \d{5}){11}$/);
    assert.equal(safetyNumber("bob", b, "alice", [a[1], a[0]]), n);
    assert.notEqual(safetyNumber("alice", [a[0], k()], "bob", b), n);
    assert.equal(safetyNumber("alice", a.map(toBase64), "bob", b.map(toBase64)), n);
  });
});

// ---------------------------------------------------------------------------
// The interop CLI

test("interop_bob.mjs decrypts a JS Alice's messages and replies", () => {
  const bobSeed = seed(50);
  const rb = new DeterministicRandom(bobSeed);
  const bob = deviceKeys(rb, 3, [4, 5]);
  const ra = new DeterministicRandom(seed(51));
  const alice = IdentityKeyPair.generate(ra);
  const sa = Session.initiate(alice, Bundle.fromKeys(bob.identity.publicKey, bob.spk, bob.opks[0]), ra);
  const texts = ["one", "two", "three"];
  const messages = texts.map((t) => sa.encrypt(utf8(t))).map((m) => ({ envelope: m.envelope, body: toHex(m.body) }));
  const input = { bob_seed: toHex(bobSeed), spk_id: 3, opk_ids: [4, 5], messages: [messages[0], messages[2], messages[1]], reply: toHex(utf8("reply")) };
  const res = spawnSync(process.execPath, [join(here, "interop_bob.mjs")], { input: JSON.stringify(input), encoding: "utf8" });
  assert.equal(res.status, 0, res.stderr);
  const out = JSON.parse(res.stdout);
  assert.deepEqual(out.plaintexts, ["one", "three", "two"].map((t) => toHex(utf8(t))));
  assert.equal(out.reply.envelope, "message");
  assert.equal(fromUtf8(sa.decrypt(fromHex(out.reply.body))), "reply");
  const bad = spawnSync(process.execPath, [join(here, "interop_bob.mjs")], { input: JSON.stringify({ ...input, messages: [messages[0], messages[0]] }), encoding: "utf8" });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /DuplicateMessage/);
});
