#!/usr/bin/env python3
"""Independent RFC 9421 check of Hexon's signed identity headers.

Uses the `http-message-signatures` package (PyPI), not Hexon code.
Reads one JSON request on stdin, writes one JSON answer on stdout.

  verify: {"mode":"verify","method","url","headers":[[name,value],...],"jwk":{...},"require":[...]}
          -> {"ok":true,"label","params","covered":[...]} or {"ok":false,"error"}
  sign:   {"mode":"sign","method","url","headers":[...],"jwk":{...},"private_pem" | "seed_b64",
           "components":[...],"created","expires","nonce"?,"tag"}
          -> {"signature_input","signature"}
"""
import base64
import datetime
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver, algorithms


class Headers:
    """Ordered field lines that keep repeated names (what the library expects of a message)."""

    def __init__(self, pairs):
        self.pairs = [(n, v) for n, v in pairs]

    def items(self):
        return list(self.pairs)

    def __iter__(self):
        return iter(dict.fromkeys(n for n, _ in self.pairs))

    def __contains__(self, name):
        return any(n.lower() == name.lower() for n, _ in self.pairs)

    def __setitem__(self, name, value):
        del self[name]
        self.pairs.append((name, value))

    def __delitem__(self, name):
        self.pairs = [(n, v) for n, v in self.pairs if n.lower() != name.lower()]

    def get(self, name):
        vals = [v for n, v in self.pairs if n.lower() == name.lower()]
        return ", ".join(vals) if vals else None


class Message:
    def __init__(self, method, url, headers):
        self.method = method
        self.url = url
        self.headers = Headers(headers)


def b64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def public_key(jwk):
    if jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519":
        return algorithms.ED25519, ed25519.Ed25519PublicKey.from_public_bytes(b64u(jwk["x"]))
    if jwk["kty"] == "EC" and jwk["crv"] == "P-256":
        nums = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64u(jwk["x"]), "big"), int.from_bytes(b64u(jwk["y"]), "big"), ec.SECP256R1()
        )
        return algorithms.ECDSA_P256_SHA256, nums.public_key()
    raise SystemExit(f"unsupported key {jwk}")


def main():
    req = json.load(sys.stdin)
    alg, pub = public_key(req["jwk"])
    kid = req["jwk"]["kid"]
    msg = Message(req["method"], req["url"], req["headers"])
    if req["mode"] == "verify":
        verifier = HTTPMessageVerifier(
            signature_algorithm=alg,
            key_resolver=MappingKeyResolver(public_keys={kid: pub}, private_keys={}),
        )
        try:
            results = verifier.verify(msg, expect_tag="hexon", require_components=req.get("require", []))
        except Exception as e:  # report, the Rust test asserts on it
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
            return
        r = results[0]
        print(json.dumps({
            "ok": True,
            "label": r.label,
            "params": {k: v for k, v in r.parameters.items()},
            "covered": [str(c) for c in r.covered_components],
        }))
    elif req["mode"] == "sign":
        if "seed_b64" in req:
            priv = ed25519.Ed25519PrivateKey.from_private_bytes(b64u(req["seed_b64"]))
        else:
            priv = serialization.load_pem_private_key(req["private_pem"].encode(), password=None)
        signer = HTTPMessageSigner(
            signature_algorithm=alg,
            key_resolver=MappingKeyResolver(public_keys={}, private_keys={kid: priv}),
        )
        utc = datetime.timezone.utc
        signer.sign(
            msg,
            key_id=kid,
            label="hexon",
            created=datetime.datetime.fromtimestamp(req["created"], tz=utc),
            expires=datetime.datetime.fromtimestamp(req["expires"], tz=utc),
            nonce=req.get("nonce"),
            tag=req["tag"],
            include_alg=True,
            covered_component_ids=req["components"],
        )
        print(json.dumps({
            "signature_input": msg.headers.get("Signature-Input"),
            "signature": msg.headers.get("Signature"),
        }))
    else:
        raise SystemExit("mode must be verify or sign")


if __name__ == "__main__":
    main()
