#!/usr/bin/env python3
"""PyJWT side of hexon-core's JWT interop test (tests/interop_jwt.rs).

Usage:
    jwt_interop.py check          print PyJWT's version; exit 3 if PyJWT is missing
    jwt_interop.py batch          read a JSON array of requests on stdin,
                                  write a JSON array of responses on stdout

Requests:
    {"op": "verify", "token": str, "jwks": {...}, "issuer": str, "audience": str}
        -> {"ok": true, "header": {...}, "claims": {...}}
         | {"ok": false, "error": "<PyJWT exception class>: <message>"}
       The key is chosen from the JWKS by the token's kid (jwt.PyJWKSet /
       jwt.PyJWK) and only that key's algorithm is allowed; iss, aud, exp,
       nbf and iat are checked by PyJWT against the real clock, and iss, aud,
       exp, iat, nbf, jti and sub are required.
    {"op": "sign", "alg": "EdDSA"|"ES256", "kid": str, "claims": {...},
     "key_pem": str}            sign with this PKCS#8 PEM private key
     | "generate": true          sign with a fresh key PyJWT's side makes up
     | "hmac_secret_b64url": str (alg "HS256") sign with this HMAC secret
     | (alg "none")              unsigned
        -> {"token": str}
"""

import base64
import json
import sys


def _missing(exc):
    sys.stderr.write(
        "PyJWT with the crypto extra is not importable (%s); run scripts/install-test-deps\n" % exc
    )
    sys.exit(3)


try:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
except ImportError as exc:  # pragma: no cover - exercised when deps are missing
    _missing(exc)


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify(req):
    try:
        header = jwt.get_unverified_header(req["token"])
        keys = jwt.PyJWKSet.from_dict(req["jwks"])
        key = keys[header["kid"]]
        claims = jwt.decode(
            req["token"],
            key=key,
            algorithms=[key.algorithm_name],
            audience=req["audience"],
            issuer=req["issuer"],
            options={
                "require": ["iss", "aud", "exp", "iat", "nbf", "jti", "sub"],
                "verify_signature": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": True,
            },
        )
        return {"ok": True, "header": header, "claims": claims}
    except (jwt.PyJWTError, KeyError) as exc:
        return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}


def sign(req):
    alg = req["alg"]
    headers = {"kid": req["kid"]}
    if alg == "none":
        key = None
    elif alg == "HS256":
        key = b64url_decode(req["hmac_secret_b64url"])
    elif req.get("generate"):
        key = ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    else:
        key = req["key_pem"]
    return {"token": jwt.encode(req["claims"], key, algorithm=alg, headers=headers)}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("check", "batch"):
        sys.stderr.write(__doc__)
        sys.exit(2)
    if sys.argv[1] == "check":
        print(json.dumps({"pyjwt": jwt.__version__}))
        return
    out = []
    for req in json.load(sys.stdin):
        if req["op"] == "verify":
            out.append(verify(req))
        elif req["op"] == "sign":
            out.append(sign(req))
        else:
            raise ValueError("unknown op %r" % req["op"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
