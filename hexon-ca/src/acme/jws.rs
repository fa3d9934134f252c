//! Flattened JWS (RFC 7515) as ACME (RFC 8555 section 6.2) uses it.
//!
//! Verification is ring's (ES256, ES384, EdDSA, RS256 with 2048-8192-bit
//! keys). The rules ACME adds are checked here: a protected header only,
//! `alg` never `none` or a MAC, exactly one of `jwk` and `kid`, a `nonce`
//! and a `url`, and an `alg` that matches the key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::problem::Problem;

/// Largest JWS body accepted, in bytes.
pub const MAX_JWS_LEN: usize = 64 * 1024;

/// A public key from a JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Jwk {
    /// EC P-256: x, y (32 bytes each).
    P256 {
        /// x.
        x: Vec<u8>,
        /// y.
        y: Vec<u8>,
    },
    /// EC P-384: x, y (48 bytes each).
    P384 {
        /// x.
        x: Vec<u8>,
        /// y.
        y: Vec<u8>,
    },
    /// Ed25519 (32 bytes).
    Ed25519(Vec<u8>),
    /// RSA modulus and exponent (big-endian, no leading zeros).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

fn b64(field: &str, v: Option<&Value>) -> Result<Vec<u8>, Problem> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed(format!("the JWK lacks \"{field}\"")))?;
    B64.decode(s)
        .map_err(|_| Problem::malformed(format!("the JWK's \"{field}\" is not base64url")))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..lead);
    v
}

impl Jwk {
    /// Parse a public JWK (private members are refused).
    pub fn from_value(v: &Value) -> Result<Self, Problem> {
        let o = v
            .as_object()
            .ok_or_else(|| Problem::malformed("the JWK is not an object"))?;
        if o.contains_key("d") {
            return Err(Problem::malformed(
                "the JWK holds a private key; send the public key only",
            ));
        }
        let kty = o.get("kty").and_then(Value::as_str).unwrap_or_default();
        let crv = o.get("crv").and_then(Value::as_str).unwrap_or_default();
        let bad_key = |why: &str| Problem::bad_public_key(why.to_owned());
        match (kty, crv) {
            ("EC", "P-256") => {
                let (x, y) = (b64("x", o.get("x"))?, b64("y", o.get("y"))?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad_key("P-256 coordinates are 32 bytes"));
                }
                Ok(Jwk::P256 { x, y })
            }
            ("EC", "P-384") => {
                let (x, y) = (b64("x", o.get("x"))?, b64("y", o.get("y"))?);
                if x.len() != 48 || y.len() != 48 {
                    return Err(bad_key("P-384 coordinates are 48 bytes"));
                }
                Ok(Jwk::P384 { x, y })
            }
            ("OKP", "Ed25519") => {
                let x = b64("x", o.get("x"))?;
                if x.len() != 32 {
                    return Err(bad_key("an Ed25519 key is 32 bytes"));
                }
                Ok(Jwk::Ed25519(x))
            }
            ("RSA", _) => {
                let n = strip_zeros(b64("n", o.get("n"))?);
                let e = strip_zeros(b64("e", o.get("e"))?);
                let bits = n.len() * 8;
                if !(2048..=8192).contains(&bits) {
                    return Err(bad_key("RSA keys must have 2048 to 8192 bits"));
                }
                if e.is_empty() || e.len() > 4 {
                    return Err(bad_key("the RSA exponent is out of range"));
                }
                Ok(Jwk::Rsa { n, e })
            }
            _ => Err(bad_key(
                "accepted keys: EC P-256 or P-384, OKP Ed25519, RSA of 2048+ bits",
            )),
        }
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url): the required members in
    /// lexicographic order, no whitespace.
    pub fn thumbprint(&self) -> String {
        B64.encode(Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// The canonical JSON the thumbprint hashes; also how the key is stored.
    pub fn canonical_json(&self) -> String {
        match self {
            Jwk::P256 { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                B64.encode(x),
                B64.encode(y)
            ),
            Jwk::P384 { x, y } => format!(
                r#"{{"crv":"P-384","kty":"EC","x":"{}","y":"{}"}}"#,
                B64.encode(x),
                B64.encode(y)
            ),
            Jwk::Ed25519(x) => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, B64.encode(x))
            }
            Jwk::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                B64.encode(e),
                B64.encode(n)
            ),
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        match self {
            Jwk::P256 { .. } => "ES256",
            Jwk::P384 { .. } => "ES384",
            Jwk::Ed25519(_) => "EdDSA",
            Jwk::Rsa { .. } => "RS256",
        }
    }

    /// Verify `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use ring::signature as rs;
        let point = |x: &[u8], y: &[u8]| {
            let mut p = Vec::with_capacity(1 + x.len() + y.len());
            p.push(4);
            p.extend_from_slice(x);
            p.extend_from_slice(y);
            p
        };
        match self {
            Jwk::P256 { x, y } => {
                rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point(x, y))
                    .verify(msg, sig)
                    .is_ok()
            }
            Jwk::P384 { x, y } => {
                rs::UnparsedPublicKey::new(&rs::ECDSA_P384_SHA384_FIXED, point(x, y))
                    .verify(msg, sig)
                    .is_ok()
            }
            Jwk::Ed25519(x) => rs::UnparsedPublicKey::new(&rs::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
            Jwk::Rsa { n, e } => rs::RsaPublicKeyComponents { n, e }
                .verify(&rs::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
        }
    }

    /// The key as a DER `SubjectPublicKeyInfo`'s `subjectPublicKey` bits
    /// compare (for revocation with the certificate's key).
    pub fn matches_spki(&self, spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
        use x509_parser::public_key::PublicKey as P;
        match (self, spki.parsed()) {
            (Jwk::P256 { x, y } | Jwk::P384 { x, y }, Ok(P::EC(pt))) => {
                let d = pt.data();
                d.first() == Some(&4)
                    && d.get(1..1 + x.len()) == Some(x)
                    && d.get(1 + x.len()..) == Some(y)
            }
            (Jwk::Ed25519(k), _) => spki.subject_public_key.data.as_ref() == k.as_slice(),
            (Jwk::Rsa { n, e }, Ok(P::RSA(rsa))) => {
                strip_zeros(rsa.modulus.to_vec()) == *n && strip_zeros(rsa.exponent.to_vec()) == *e
            }
            _ => false,
        }
    }
}

/// Who signed: a new key (`jwk`) or an existing account (`kid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    /// An embedded key.
    Jwk(Jwk),
    /// An account URL.
    Kid(String),
}

/// A parsed, not yet verified flattened JWS.
#[derive(Debug)]
pub struct Jws {
    /// The protected header, decoded.
    pub header: Map<String, Value>,
    /// The signer.
    pub signer: Signer,
    /// `alg`.
    pub alg: String,
    /// `nonce` (absent only in inner JWSs: key change, EAB).
    pub nonce: Option<String>,
    /// `url`.
    pub url: String,
    /// Payload, decoded (empty for POST-as-GET).
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flattened {
    protected: String,
    payload: String,
    signature: String,
}

impl Jws {
    /// Parse a flattened JWS JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, Problem> {
        if body.len() > MAX_JWS_LEN {
            return Err(Problem::malformed(format!(
                "the request is larger than {MAX_JWS_LEN} bytes"
            )));
        }
        let f: Flattened = serde_json::from_slice(body).map_err(|e| {
            Problem::malformed(format!(
                "not a flattened JWS with only protected, payload and signature ({e})"
            ))
        })?;
        Self::from_parts(&f.protected, &f.payload, &f.signature)
    }

    /// Parse from a JSON value (the inner JWS of a key change, an EAB).
    pub fn from_value(v: &Value) -> Result<Self, Problem> {
        let f: Flattened = serde_json::from_value(v.clone()).map_err(|e| {
            Problem::malformed(format!("the inner JWS is not a flattened JWS ({e})"))
        })?;
        Self::from_parts(&f.protected, &f.payload, &f.signature)
    }

    fn from_parts(protected: &str, payload: &str, signature: &str) -> Result<Self, Problem> {
        let dec = |what: &str, s: &str| {
            B64.decode(s).map_err(|_| {
                Problem::malformed(format!("the JWS {what} is not base64url without padding"))
            })
        };
        let header_bytes = dec("protected header", protected)?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|_| Problem::malformed("the JWS protected header is not a JSON object"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed("the protected header lacks \"alg\""))?
            .to_owned();
        if !matches!(
            alg.as_str(),
            "ES256" | "ES384" | "EdDSA" | "RS256" | "HS256"
        ) {
            return Err(Problem::bad_signature_algorithm(&alg));
        }
        let signer = match (header.get("jwk"), header.get("kid")) {
            (Some(jwk), None) => Signer::Jwk(Jwk::from_value(jwk)?),
            (None, Some(kid)) => Signer::Kid(
                kid.as_str()
                    .ok_or_else(|| Problem::malformed("\"kid\" is not a string"))?
                    .to_owned(),
            ),
            (Some(_), Some(_)) => {
                return Err(Problem::malformed(
                    "the protected header has both \"jwk\" and \"kid\"",
                ));
            }
            (None, None) => {
                return Err(Problem::malformed(
                    "the protected header has neither \"jwk\" nor \"kid\"",
                ));
            }
        };
        let nonce = match header.get("nonce") {
            None => None,
            Some(Value::String(n)) => Some(n.clone()),
            Some(_) => return Err(Problem::malformed("\"nonce\" is not a string")),
        };
        let url = header
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed("the protected header lacks \"url\""))?
            .to_owned();
        let mut signing_input = Vec::with_capacity(protected.len() + 1 + payload.len());
        signing_input.extend_from_slice(protected.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(payload.as_bytes());
        Ok(Jws {
            header,
            signer,
            alg,
            nonce,
            url,
            payload: dec("payload", payload)?,
            signing_input,
            signature: dec("signature", signature)?,
        })
    }

    /// Verify with `key`, insisting that `alg` is the key's algorithm.
    pub fn verify(&self, key: &Jwk) -> Result<(), Problem> {
        if self.alg != key.alg() {
            return Err(Problem::bad_signature_algorithm(&self.alg));
        }
        if key.verify(&self.signing_input, &self.signature) {
            Ok(())
        } else {
            Err(Problem::malformed("the JWS signature does not verify"))
        }
    }

    /// Verify an HS256 MAC with `key` (External Account Binding), in
    /// constant time.
    pub fn verify_hmac(&self, key: &[u8]) -> Result<(), Problem> {
        if self.alg != "HS256" {
            return Err(Problem::malformed(
                "the external account binding must use HS256",
            ));
        }
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::verify(&k, &self.signing_input, &self.signature).map_err(|_| {
            Problem::unauthorized("the external account binding's MAC does not verify")
        })
    }

    /// The payload as JSON (`{}` for an empty payload is *not* assumed:
    /// an empty payload is POST-as-GET and has no JSON).
    pub fn json(&self) -> Result<Value, Problem> {
        serde_json::from_slice(&self.payload)
            .map_err(|_| Problem::malformed("the JWS payload is not JSON"))
    }

    /// Whether this is POST-as-GET (empty payload).
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }
}
