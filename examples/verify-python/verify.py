#!/usr/bin/env python3
"""A non-Rust backend behind Hexon: verify the signed identity with standard libraries.

Only two public packages are needed (pip install http-message-signatures cryptography):
an RFC 9421 verifier and the JWKS the gateway publishes at /.well-known/jwks.json.

    python3 verify.py jwks.json 8081 [AUTHORITY ...]     # serve: "hello <user>" or 401
    python3 verify.py jwks.json --check AUTHORITY ...    # read {"method","url","headers"} on stdin

AUTHORITY: the host[:port] names the gateway's upstream requests carry (default for the
server: 127.0.0.1:PORT). Rules (docs/SIGNED-IDENTITY.md): accept only the signature whose
tag is "hexon", made for one of your authorities, covering the identity headers you read
and @authority; trust no Hexon-* (or Hexon_*) header it does not cover.
"""
import base64
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

REQUIRED = ["hexon-user", "hexon-subject", "hexon-kind", "hexon-route", "@authority"]


def _b64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load_jwks(text):
    """kid -> (algorithm class, public key) for the OKP/Ed25519 and EC/P-256 keys of a JWKS."""
    keys = {}
    for k in json.loads(text)["keys"]:
        if k["kty"] == "OKP" and k["crv"] == "Ed25519":
            keys[k["kid"]] = (algorithms.ED25519, ed25519.Ed25519PublicKey.from_public_bytes(_b64u(k["x"])))
        elif k["kty"] == "EC" and k["crv"] == "P-256":
            x, y = (int.from_bytes(_b64u(k[c]), "big") for c in ("x", "y"))
            keys[k["kid"]] = (algorithms.ECDSA_P256_SHA256, ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key())
    return keys


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, key):
        self.key = key

    def resolve_public_key(self, key_id):
        return self.key


class _Headers:
    def __init__(self, pairs):
        self.pairs = list(pairs)

    def items(self):
        return list(self.pairs)

    def __iter__(self):
        return iter(dict.fromkeys(n for n, _ in self.pairs))

    def __contains__(self, name):
        return any(n.lower() == name.lower() for n, _ in self.pairs)


class _Message:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, _Headers(headers)


def _decode(value):
    """Hexon values are percent-encoded UTF-8 (commas, quotes, spaces, non-ASCII are escaped)."""
    return urllib.parse.unquote(value.strip(), errors="strict")


def _authority(url):
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(parts.scheme)
    return host[: -len(default)] if default and host.endswith(default) else host


def verify(method, url, headers, keys, authorities):
    """Return the caller's identity as a dict, or raise if the signature does not verify."""
    if _authority(url) not in authorities:
        raise ValueError(f"signed for another authority: {_authority(url)!r}")
    sig_input = ", ".join(v for n, v in headers if n.lower() == "signature-input")
    kid = sig_input.split('keyid="', 1)[1].split('"', 1)[0] if 'keyid="' in sig_input else None
    if kid not in keys:
        raise ValueError(f"unknown key id {kid!r}")
    alg, key = keys[kid]
    verifier = HTTPMessageVerifier(signature_algorithm=alg, key_resolver=_Keys(key))
    result = verifier.verify(_Message(method, url, headers), expect_tag="hexon", require_components=REQUIRED)[0]
    covered = {str(c).strip('"') for c in result.covered_components}
    fields = {}
    for name, value in headers:
        n = name.lower()
        # Hexon_X reaches CGI-style apps as the same variable as Hexon-X: it is never covered.
        if n.replace("_", "-").startswith("hexon-"):
            if n not in covered:
                raise ValueError(f"{name} is not covered by the signature")
            fields[n] = value if n not in fields else fields[n] + ", " + value
    groups = [_decode(g) for g in fields.get("hexon-groups", "").split(",") if g.strip()]
    auth = {m.strip(): int(t) for m, t in (a.split("=") for a in fields.get("hexon-auth", "").split(",") if a.strip())}
    return {
        "subject": _decode(fields["hexon-subject"]),
        "username": _decode(fields["hexon-user"]),
        "kind": fields["hexon-kind"],
        "email": _decode(fields["hexon-email"]) if "hexon-email" in fields else None,
        "groups": groups,
        "auth": auth,
        "session": _decode(fields["hexon-session"]) if "hexon-session" in fields else None,
        "route": _decode(fields["hexon-route"]),
    }


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    keys = load_jwks(open(sys.argv[1]).read())
    authorities = {a.lower() for a in sys.argv[3:]}
    if sys.argv[2] == "--check":
        req = json.load(sys.stdin)
        try:
            who = verify(req["method"], req["url"], req["headers"], keys, authorities)
            print(json.dumps({"ok": True, "identity": who}))
        except Exception as e:
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = f"http://{self.headers['Host']}{self.path}"
            try:
                who = verify(self.command, url, list(self.headers.items()), keys, authorities)
            except Exception as e:
                self.log_message("refused: %s", e)  # the reason stays in the log
                self.send_response(401)
                self.end_headers()
                return
            body = f"hello {who['username']}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    authorities = authorities or {f"127.0.0.1:{sys.argv[2]}"}
    HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()


if __name__ == "__main__":
    main()
