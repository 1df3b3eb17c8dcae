"""Python Alice talks to JavaScript Bob (tests/js/interop_bob.mjs, on libsodium-wrappers):
the two implementations of docs/crypto.md agree on real, randomly keyed sessions."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from natter_client.crypto import (
    Bundle,
    DeterministicRandom,
    IdentityKeyPair,
    PreKey,
    Session,
    SignedPreKey,
    SystemRandom,
    encode_content,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "js" / "interop_bob.mjs"

pytestmark = pytest.mark.skipif(
    not SCRIPT.exists(), reason="tests/js/interop_bob.mjs not written yet"
)


def node_or_skip() -> str:
    """The node binary; without node or libsodium-wrappers, fail on CI and skip elsewhere."""
    node = shutil.which("node")
    missing = []
    if node is None:
        missing.append("node is not on PATH")
    if not (ROOT / "node_modules" / "libsodium-wrappers").is_dir():
        missing.append("node_modules/libsodium-wrappers is missing (run `npm ci`)")
    if missing:
        message = "cross-language test needs " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert node is not None
    return node


def run_bob(node: str, request: dict) -> dict:
    result = subprocess.run(
        [node, str(SCRIPT.relative_to(ROOT))],
        cwd=ROOT,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"interop_bob.mjs failed: {result.stderr.strip()}"
    return json.loads(result.stdout)


def bob_bundle(bob_seed: bytes, spk_id: int, opk_ids: list[int], opk_id: int | None) -> Bundle:
    """Bob's public bundle, derived exactly as the script derives his keys (§1 draw order)."""
    rng = DeterministicRandom(bob_seed)
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, spk_id, rng)
    opks = {key_id: PreKey.generate(key_id, rng) for key_id in opk_ids}
    opk = None if opk_id is None else opks[opk_id]
    return Bundle(
        identity_key=identity.public,
        spk_id=spk.key_id,
        spk_public=spk.public,
        spk_signature=spk.signature,
        opk_id=None if opk is None else opk.key_id,
        opk_public=None if opk is None else opk.public,
    )


@pytest.mark.parametrize("use_opk", [True, False], ids=["with-opk", "without-opk"])
def test_python_alice_and_javascript_bob_exchange_messages(use_opk):
    node = node_or_skip()
    bob_seed = secrets.token_bytes(32)
    spk_id = secrets.randbelow(2**32 - 1) + 1
    first_opk = secrets.randbelow(2**31) + 1
    opk_ids = [first_opk, first_opk + 1, first_opk + 2]
    bundle = bob_bundle(bob_seed, spk_id, opk_ids, opk_ids[1] if use_opk else None)

    alice = Session.initiate(IdentityKeyPair.generate(SystemRandom()), bundle)
    plaintexts = [
        encode_content({"type": "text", "text": "hello from Python"}),
        b"",
        encode_content({"type": "text", "text": "ünïcode ✓ 😀 " * 20}),
    ]
    messages = []
    for plaintext in plaintexts:
        envelope, body = alice.encrypt(plaintext)
        assert envelope == "prekey"
        messages.append({"envelope": envelope, "body": body.hex()})
    reply_plaintext = encode_content({"type": "text", "text": "hello from JavaScript"})

    answer = run_bob(
        node,
        {
            "bob_seed": bob_seed.hex(),
            "spk_id": spk_id,
            "opk_ids": opk_ids,
            "messages": messages,
            "reply": reply_plaintext.hex(),
        },
    )

    assert answer["plaintexts"] == [p.hex() for p in plaintexts]
    assert answer["reply"]["envelope"] == "message"
    assert alice.decrypt(bytes.fromhex(answer["reply"]["body"])) == reply_plaintext
    assert alice.next_envelope == "message"


def test_javascript_bob_reads_out_of_order_delivery():
    node = node_or_skip()
    bob_seed = secrets.token_bytes(32)
    bundle = bob_bundle(bob_seed, 1, [1], 1)
    alice = Session.initiate(IdentityKeyPair.generate(SystemRandom()), bundle)
    sent = [alice.encrypt(f"message {i}".encode()) for i in range(5)]
    order = [1, 4, 0, 3, 2]
    answer = run_bob(
        node,
        {
            "bob_seed": bob_seed.hex(),
            "spk_id": 1,
            "opk_ids": [1],
            "messages": [{"envelope": sent[i][0], "body": sent[i][1].hex()} for i in order],
            "reply": b"ok".hex(),
        },
    )
    assert answer["plaintexts"] == [f"message {i}".encode().hex() for i in order]
    assert alice.decrypt(bytes.fromhex(answer["reply"]["body"])) == b"ok"
