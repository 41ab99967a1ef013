// Shared by consumer.mjs and provider.mjs: the rules of protocol.md sections
// 2 and 3.0, written from the text with panva/jose. No code from the gateway.

import { createHash, createPrivateKey, randomBytes } from "node:crypto";

import { base64url, calculateJwkThumbprint, compactVerify, decodeProtectedHeader, exportJWK, importJWK, importPKCS8 } from "jose";

export const SKEW = 30;
export const ASSERTION_LIFETIME = 60;
export const TOKEN_LIFETIME = 300;
export const MESSAGE_LIFETIME = 120;
export const PROBLEM_PREFIX = "urn:gateway:problem:";
export const REFUSED_HEADERS = ["crit", "b64", "zip", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256"];
export const enc = new TextEncoder();
export const dec = new TextDecoder();

export class VerifyError extends Error {}

export function now() {
  return Math.floor(Date.now() / 1000);
}

export function newJti() {
  // 3.0: at least 128 random bits.
  return base64url.encode(randomBytes(16));
}

export function sha256b64url(ascii) {
  // 3.0: base64url without padding of SHA-256 over the ASCII bytes.
  return base64url.encode(createHash("sha256").update(Buffer.from(ascii, "ascii")).digest());
}

export function normTyp(typ) {
  // 3.0: case-insensitive, optional "application/" prefix removed.
  if (typeof typ !== "string") return null;
  const lower = typ.toLowerCase();
  return lower.startsWith("application/") ? lower.slice("application/".length) : lower;
}
// ---------------------------------------------------------------- keys

// Section 2: the algorithm comes from the key, never from a header alone.
export function signingAlgsForJwk(jwk) {
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519") return ["EdDSA", "Ed25519"];
  if (jwk.kty === "EC" && jwk.crv === "P-256") return ["ES256"];
  return [];
}

export function isEncryptionJwk(jwk) {
  return (jwk.kty === "OKP" && jwk.crv === "X25519") || (jwk.kty === "EC" && jwk.crv === "P-256");
}

export function publicJwk(jwk) {
  const { d, ...pub } = jwk; // eslint-disable-line no-unused-vars
  return pub;
}

export async function loadSigningKey(pem) {
  const type = createPrivateKey(pem).asymmetricKeyType;
  let alg;
  if (type === "ed25519") alg = "EdDSA";
  else if (type === "ec") alg = "ES256";
  else throw new Error(`signing key: unsupported key type ${type}`);
  const key = await importPKCS8(pem, alg, { extractable: true });
  const jwk = publicJwk(await exportJWK(key));
  const kid = await calculateJwkThumbprint(jwk, "sha256");
  return { key, alg, kid, jwk };
}

export async function loadEncryptionKey(pem) {
  const type = createPrivateKey(pem).asymmetricKeyType;
  if (type !== "x25519" && type !== "ec") throw new Error(`encryption key: unsupported key type ${type}`);
  const key = await importPKCS8(pem, "ECDH-ES+A256KW", { extractable: true });
  const jwk = publicJwk(await exportJWK(key));
  const kid = await calculateJwkThumbprint(jwk, "sha256");
  return { key, kid, jwk };
}

export function refusedHeaderCheck(header, where) {
  for (const name of REFUSED_HEADERS) {
    if (name in header) throw new VerifyError(`${where}: refused header ${name}`);
  }
  if (header.alg === "none" || /^HS/.test(String(header.alg))) {
    throw new VerifyError(`${where}: refused alg ${header.alg}`);
  }
}

// Verify a compact JWS against a JWKS, choosing the key by kid and the
// algorithm by the key. Returns {payload (object), header}.
export async function verifyJws(compact, jwks, expectedTyp, where) {
  let header;
  try {
    header = decodeProtectedHeader(compact);
  } catch (e) {
    throw new VerifyError(`${where}: not a compact JWS (${e.message})`);
  }
  refusedHeaderCheck(header, where);
  if (normTyp(header.typ) !== expectedTyp) {
    throw new VerifyError(`${where}: typ ${JSON.stringify(header.typ)}, expected ${expectedTyp}`);
  }
  const jwk = jwks.keys.find((k) => k.kid === header.kid && (k.use === undefined || k.use === "sig"));
  if (!jwk) throw new VerifyError(`${where}: kid ${header.kid} is not a signing key of the signer`);
  const algorithms = signingAlgsForJwk(jwk);
  if (!algorithms.includes(header.alg)) {
    throw new VerifyError(`${where}: alg ${header.alg} does not fit key ${jwk.kty}/${jwk.crv}`);
  }
  const key = await importJWK(jwk, header.alg);
  let result;
  try {
    result = await compactVerify(compact, key, { algorithms });
  } catch (e) {
    throw new VerifyError(`${where}: signature does not verify (${e.code || e.message})`);
  }
  let payload;
  try {
    payload = JSON.parse(dec.decode(result.payload));
  } catch {
    throw new VerifyError(`${where}: payload is not JSON`);
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new VerifyError(`${where}: payload is not a JSON object`);
  }
  return { payload, header };
}

export function requireClaims(payload, spec, where) {
  for (const [name, type] of Object.entries(spec)) {
    const value = payload[name];
    let ok;
    if (type === "integer") ok = Number.isInteger(value);
    else if (type === "array") ok = Array.isArray(value);
    else if (type === "object") ok = value !== null && typeof value === "object" && !Array.isArray(value);
    else ok = typeof value === type;
    if (!ok) throw new VerifyError(`${where}: claim ${name} missing or not ${type}`);
  }
}

export function checkFresh(payload, lifetime, where) {
  const t = now();
  const { iat, exp, nbf } = payload;
  if (!(iat <= t + SKEW)) throw new VerifyError(`${where}: iat ${iat} in the future`);
  if (!(exp > t - SKEW)) throw new VerifyError(`${where}: expired (exp ${exp})`);
  if (!(iat < exp && exp <= iat + lifetime)) {
    throw new VerifyError(`${where}: lifetime exp-iat=${exp - iat} not in (0, ${lifetime}]`);
  }
  if (nbf !== undefined && !(Number.isInteger(nbf) && nbf <= t + SKEW)) {
    throw new VerifyError(`${where}: nbf ${nbf} in the future`);
  }
}


// Section 2: verify the signed trust registry with the authority's JWKS.
export async function verifyRegistry(registryJws, authorityJwks) {
  const { payload } = await verifyJws(registryJws.trim(), authorityJwks, "registry+jwt", "registry");
  requireClaims(payload, { iss: "string", iat: "integer", exp: "integer", serial: "integer", agencies: "array" }, "registry");
  if (!(payload.exp > now() - SKEW)) throw new VerifyError("registry: expired");
  return payload;
}

// The JWKS of an active agency of a verified registry payload.
export function agencyJwks(registry, agencyId) {
  const agency = registry.agencies.find((a) => a.id === agencyId);
  if (!agency) throw new VerifyError(`registry: no agency ${agencyId}`);
  if (agency.status !== "active") throw new VerifyError(`registry: ${agencyId} is ${agency.status}`);
  return agency.jwks;
}
