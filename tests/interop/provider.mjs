#!/usr/bin/env node
// An independent provider gateway for the reverse interop check: the Python
// consumer gateway exchanges with this one. Written from protocol.md alone
// with panva/jose; no code from the gateway package.
//
// It takes the place of one agency (`agency_id`) in a demo network: it signs a
// new trust registry (serial + 1) with the registry authority's key, in which
// that agency's gateway_url is this server, and writes it over the old one, so
// the other gateways pick it up on their next reload.
//
// Usage: node provider.mjs [config.json]   (config on stdin when no argument)
//
// Config: agency_id, signing_key_pem, encryption_key_pem, registry_path,
//   authority_signing_key_pem, authority_jwks, services (ids),
//   contracts: [{id, version, provider, consumer, service, purposes: [ids],
//                fields: [top-level names], subject_field, requires_end_user}]
//
// Prints one line {"ready": true, "url", "serial"} on stdout when serving; a
// JSON line per request on stderr. Its built-in backend answers
// {national_id, birth_date, municipality, internal_note}; a request body with
// an integer `pad_response` makes `municipality` that many characters longer,
// and one with `tamper_response` (in_reply_to, req_hash, fields, aud, iss,
// stale, lifetime, typ, float, signature) gets a response wrong in that way.

import { rename, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";

import {
  CompactEncrypt,
  CompactSign,
  compactDecrypt,
  decodeJwt,
  decodeProtectedHeader,
  generateKeyPair,
  importJWK,
} from "jose";

import {
  ASSERTION_LIFETIME,
  MESSAGE_LIFETIME,
  PROBLEM_PREFIX,
  TOKEN_LIFETIME,
  VerifyError,
  agencyJwks,
  checkFresh,
  dec,
  enc,
  isEncryptionJwk,
  loadEncryptionKey,
  loadSigningKey,
  newJti,
  normTyp,
  now,
  refusedHeaderCheck,
  requireClaims,
  sha256b64url,
  verifyJws,
  verifyRegistry,
} from "./common.mjs";

const MAX_BODY = 1024 * 1024;
const TITLES = {
  "envelope-invalid": "The message envelope is not valid",
  "signature-invalid": "The message signature does not verify",
  "token-invalid": "The access token is not valid",
  "binding-mismatch": "The message is not bound to its token",
  "stale-message": "The message is outside its validity window",
  replay: "This message was already received",
  "contract-denied": "No contract in force allows this exchange",
  "unknown-service": "This gateway does not offer that service",
  "payload-too-large": "The request body is too large",
};
const STATUS = {
  "envelope-invalid": 400,
  "signature-invalid": 401,
  "token-invalid": 401,
  "binding-mismatch": 401,
  "stale-message": 401,
  replay: 409,
  "contract-denied": 403,
  "unknown-service": 404,
  "payload-too-large": 413,
};

class Problem extends Error {
  constructor(name, detail) {
    super(detail);
    this.name_ = name;
  }
}

class OAuthError extends Error {
  constructor(status, error, description) {
    super(description);
    this.status = status;
    this.error = error;
  }
}

function log(event) {
  process.stderr.write(`${JSON.stringify({ t: now(), ...event })}\n`);
}

function readConfig() {
  const arg = process.argv[2];
  return readFile(arg && arg !== "-" ? arg : "/dev/stdin", "utf8").then(JSON.parse);
}

// ---------------------------------------------------------------- state

const state = {
  config: null,
  sig: null,
  enc: null,
  ownJwks: null,
  registry: null,
  seen: new Map(), // "iss jti" -> forget after (exp + skew)
  auditIndex: 0,
};

function spend(iss, jti, exp) {
  const t = now();
  for (const [k, until] of state.seen) if (until < t) state.seen.delete(k);
  const key = `${iss} ${jti}`;
  if (state.seen.has(key)) return false;
  state.seen.set(key, exp + 30);
  return true;
}

function trustedJwks(agencyId) {
  try {
    return agencyJwks(state.registry, agencyId);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- HTTP plumbing

function readBody(request, limit) {
  return new Promise((resolve, reject) => {
    const declared = Number(request.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new Problem("payload-too-large", `the request body exceeds ${limit} bytes`));
      request.resume();
      return;
    }
    const chunks = [];
    let size = 0;
    request.on("data", (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Problem("payload-too-large", `the request body exceeds ${limit} bytes`));
        request.destroy();
        return;
      }
      chunks.push(chunk);
    });
    request.on("end", () => resolve(Buffer.concat(chunks)));
    request.on("error", reject);
  });
}

function send(response, status, contentType, body, headers = {}) {
  response.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body), ...headers });
  response.end(body);
}

function sendProblem(response, problem) {
  const status = STATUS[problem.name_];
  const body = { type: `${PROBLEM_PREFIX}${problem.name_}`, title: TITLES[problem.name_], status, detail: problem.message };
  send(response, status, "application/problem+json", JSON.stringify(body));
}

// ---------------------------------------------------------------- 3.1 token

async function tokenEndpoint(request, response) {
  const raw = await readBody(request, 64 * 1024);
  const contentType = String(request.headers["content-type"] || "").split(";")[0].trim().toLowerCase();
  if (contentType !== "application/x-www-form-urlencoded") {
    throw new OAuthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded");
  }
  const form = new URLSearchParams(raw.toString("utf8"));
  const param = (name) => {
    const values = form.getAll(name);
    if (values.length !== 1) throw new OAuthError(400, "invalid_request", `${name} missing or repeated`);
    return values[0];
  };
  if (param("grant_type") !== "client_credentials") {
    throw new OAuthError(400, "unsupported_grant_type", "grant_type must be client_credentials");
  }
  if (param("client_assertion_type") !== "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
    throw new OAuthError(400, "invalid_request", "wrong client_assertion_type");
  }
  const assertion = param("client_assertion");
  let details;
  try {
    details = JSON.parse(param("authorization_details"));
  } catch {
    throw new OAuthError(400, "invalid_request", "authorization_details is not JSON");
  }
  if (!Array.isArray(details) || details.length !== 1 || typeof details[0] !== "object" || details[0] === null || Array.isArray(details[0])) {
    throw new OAuthError(400, "invalid_request", "authorization_details must be a JSON array of one object");
  }
  const detail = details[0];

  // The assertion: any failure is invalid_client.
  let claims;
  let kid;
  try {
    const unverified = decodeJwt(assertion);
    const jwks = typeof unverified.iss === "string" ? trustedJwks(unverified.iss) : null;
    if (!jwks) throw new VerifyError("iss is not an active agency");
    const verified = await verifyJws(assertion, jwks, "client-assertion+jwt", "client assertion");
    claims = verified.payload;
    kid = verified.header.kid;
    requireClaims(claims, { iss: "string", sub: "string", aud: "string", jti: "string", iat: "integer", exp: "integer" }, "client assertion");
    if (claims.iss !== claims.sub) throw new VerifyError("iss != sub");
    if (claims.aud !== state.config.agency_id) throw new VerifyError("aud is not this provider");
    checkFresh(claims, ASSERTION_LIFETIME, "client assertion");
    if (!spend(claims.iss, claims.jti, claims.exp)) throw new VerifyError("assertion replayed");
  } catch (e) {
    log({ endpoint: "token", refused: "invalid_client", reason: e.message });
    throw new OAuthError(401, "invalid_client", "client authentication failed");
  }

  const refuse = (why) => new OAuthError(400, "invalid_authorization_details", why);
  if (detail.type !== "data_exchange") throw refuse("type must be data_exchange");
  const contract = state.config.contracts.find((c) => c.id === detail.contract);
  if (!contract) throw refuse("unknown contract");
  if (contract.consumer !== claims.iss || contract.provider !== state.config.agency_id || contract.service !== detail.service) {
    throw refuse("the contract is not between these agencies for this service");
  }
  if (!contract.purposes.includes(detail.purpose)) throw refuse("the contract does not allow this purpose");

  const grant = {
    type: "data_exchange",
    contract: contract.id,
    service: contract.service,
    purpose: detail.purpose,
    fields: contract.fields,
    contract_version: contract.version,
  };
  const iat = now();
  const token = await new CompactSign(
    enc.encode(
      JSON.stringify({
        iss: state.config.agency_id,
        sub: claims.iss,
        client_id: claims.iss,
        aud: state.config.agency_id,
        iat,
        exp: iat + TOKEN_LIFETIME,
        jti: newJti(),
        cnf: { jkt: kid },
        authorization_details: [grant],
      }),
    ),
  )
    .setProtectedHeader({ typ: "at+jwt", alg: state.sig.alg, kid: state.sig.kid })
    .sign(state.sig.key);
  log({ endpoint: "token", granted: claims.iss, contract: contract.id });
  send(
    response,
    200,
    "application/json",
    JSON.stringify({ access_token: token, token_type: "Bearer", expires_in: TOKEN_LIFETIME, authorization_details: [grant] }),
    { "cache-control": "no-store" },
  );
}

// ---------------------------------------------------------------- 3.3 / 3.4

const REQUEST_CLAIMS = {
  iss: "string",
  aud: "string",
  jti: "string",
  iat: "integer",
  exp: "integer",
  ath: "string",
  svc: "string",
  contract: "string",
  purpose: "string",
  subject: "string",
  client: "string",
  body: "object",
};

async function checkToken(request) {
  const auth = String(request.headers.authorization || "");
  const match = /^Bearer ([A-Za-z0-9_.~+/-]+=*)$/.exec(auth);
  if (!match) throw new Problem("token-invalid", "an Authorization: Bearer access token is required");
  const token = match[1];
  try {
    const { payload } = await verifyJws(token, state.ownJwks, "at+jwt", "access token");
    requireClaims(
      payload,
      { iss: "string", sub: "string", client_id: "string", aud: "string", iat: "integer", exp: "integer", jti: "string", cnf: "object", authorization_details: "array" },
      "access token",
    );
    if (payload.iss !== state.config.agency_id || payload.aud !== state.config.agency_id) throw new VerifyError("iss/aud");
    checkFresh(payload, TOKEN_LIFETIME, "access token");
    if (typeof payload.cnf.jkt !== "string" || payload.authorization_details.length !== 1) throw new VerifyError("cnf/grant");
    return { token, claims: payload, grant: payload.authorization_details[0] };
  } catch (e) {
    if (!(e instanceof VerifyError)) throw e;
    throw new Problem("token-invalid", "the access token is not valid");
  }
}

async function openRequest(request, raw, token) {
  const contentType = String(request.headers["content-type"] || "").split(";")[0].trim().toLowerCase();
  if (contentType !== "application/jose") throw new Problem("envelope-invalid", "Content-Type must be application/jose");
  const jwe = raw.toString("ascii").trim();
  let inner;
  let header;
  let claims;
  try {
    const outer = decodeProtectedHeader(jwe);
    refusedHeaderCheck(outer, "request JWE");
    if (normTyp(outer.typ) !== "exchange-request+jwe") throw new VerifyError("JWE typ");
    if (outer.kid !== state.enc.kid) throw new VerifyError("JWE kid is not ours");
    if (outer.alg !== "ECDH-ES+A256KW" || outer.enc !== "A256GCM" || !outer.epk) throw new VerifyError("JWE alg/enc/epk");
    const { plaintext } = await compactDecrypt(jwe, state.enc.key, {
      keyManagementAlgorithms: ["ECDH-ES+A256KW"],
      contentEncryptionAlgorithms: ["A256GCM"],
    });
    inner = dec.decode(plaintext);
    header = decodeProtectedHeader(inner);
    refusedHeaderCheck(header, "request JWS");
    if (normTyp(header.typ) !== "exchange-request+jwt") throw new VerifyError("JWS typ");
    if (header.kid !== token.claims.cnf.jkt) throw new VerifyError("JWS kid is not cnf.jkt");
    if (!["EdDSA", "Ed25519", "ES256"].includes(header.alg)) throw new VerifyError("JWS alg");
    claims = JSON.parse(dec.decode(Buffer.from(inner.split(".")[1], "base64url")));
    if (claims === null || typeof claims !== "object" || Array.isArray(claims)) throw new VerifyError("not an object");
    requireClaims(claims, REQUEST_CLAIMS, "request");
    if (claims.end_user !== undefined && typeof claims.end_user !== "string") throw new VerifyError("end_user type");
  } catch (e) {
    throw new Problem("envelope-invalid", `the envelope is not valid (${e.code || e.message})`);
  }
  // 3: signature by the registry's key of the token's sub.
  const jwks = trustedJwks(token.claims.sub);
  try {
    if (!jwks) throw new VerifyError("consumer not active");
    await verifyJws(inner, jwks, "exchange-request+jwt", "request JWS");
  } catch (e) {
    if (!(e instanceof VerifyError)) throw e;
    throw new Problem("signature-invalid", "the request signature does not verify");
  }
  return { inner, claims, consumerJwks: jwks };
}

function filterFields(record, fields) {
  // Top-level paths only: enough for this demo contract.
  const out = {};
  for (const f of fields) if (Object.hasOwn(record, f)) out[f] = record[f];
  return out;
}

async function serviceEndpoint(request, response, service) {
  if (!state.config.services.includes(service)) throw new Problem("unknown-service", "this gateway does not offer that service");
  const raw = await readBody(request, MAX_BODY);
  const token = await checkToken(request);
  const { inner, claims, consumerJwks } = await openRequest(request, raw, token);
  const grant = token.grant;
  const contract = state.config.contracts.find((c) => c.id === grant.contract);

  const bound = {
    ath: claims.ath === sha256b64url(token.token),
    iss: claims.iss === token.claims.sub,
    aud: claims.aud === state.config.agency_id,
    svc: claims.svc === service && claims.svc === grant.service,
    contract: claims.contract === grant.contract,
    purpose: claims.purpose === grant.purpose,
    subject: contract !== undefined && claims.subject === claims.body[contract.subject_field],
  };
  for (const [name, ok] of Object.entries(bound)) {
    if (!ok) throw new Problem("binding-mismatch", `claim '${name}' does not match the token or request`);
  }
  try {
    checkFresh(claims, MESSAGE_LIFETIME, "request");
  } catch (e) {
    if (!(e instanceof VerifyError)) throw e;
    throw new Problem("stale-message", e.message);
  }
  if (!spend(claims.iss, claims.jti, claims.exp)) throw new Problem("replay", "this message id was already used");
  if (contract.version !== grant.contract_version || !contract.purposes.includes(grant.purpose)) {
    throw new Problem("contract-denied", "the contract no longer allows this exchange");
  }
  if (contract.requires_end_user && claims.end_user === undefined) throw new Problem("contract-denied", "the contract requires an end_user");

  // The built-in backend.
  const record = {
    national_id: claims.subject,
    birth_date: "1970-01-01",
    municipality: "interop-node",
    internal_note: "never released",
  };
  if (Number.isInteger(claims.body.pad_response)) record.municipality += ` ${"x".repeat(claims.body.pad_response)}`;
  const released = filterFields(record, contract.fields);
  state.auditIndex += 1;

  const encJwk = consumerJwks.keys.find((k) => k.use === "enc");
  if (!encJwk || !isEncryptionJwk(encJwk)) throw new Error("consumer has no encryption key");
  const iat = now();
  const replyClaims = {
    iss: state.config.agency_id,
    aud: claims.iss,
    jti: newJti(),
    iat,
    exp: iat + MESSAGE_LIFETIME,
    in_reply_to: claims.jti,
    req_hash: sha256b64url(inner),
    status: 200,
    fields: Object.keys(released).sort(),
    body: released,
    audit: { index: state.auditIndex, origin: `${state.config.agency_id}/audit` },
  };
  // A deliberately wrong response, to see the consumer gateway refuse it (3.4).
  const tamper = claims.body.tamper_response;
  let signer = state.sig;
  let innerTyp = "exchange-response+jwt";
  let payloadText = null;
  if (tamper === "in_reply_to") replyClaims.in_reply_to = newJti();
  else if (tamper === "req_hash") replyClaims.req_hash = sha256b64url(`${inner}.`);
  else if (tamper === "fields") {
    replyClaims.body = { ...released, internal_note: record.internal_note };
    replyClaims.fields = Object.keys(replyClaims.body).sort();
  } else if (tamper === "aud") replyClaims.aud = state.config.agency_id;
  else if (tamper === "iss") replyClaims.iss = claims.iss;
  else if (tamper === "stale") {
    replyClaims.iat = iat - 400;
    replyClaims.exp = iat - 400 + MESSAGE_LIFETIME;
  } else if (tamper === "lifetime") replyClaims.exp = iat + MESSAGE_LIFETIME + 1;
  else if (tamper === "typ") innerTyp = "exchange-request+jwt";
  else if (tamper === "float") payloadText = JSON.stringify(replyClaims).replace('"status":200', '"status":200.0');
  else if (tamper === "signature") {
    const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
    signer = { key: privateKey, kid: state.sig.kid, alg: "EdDSA" };
  } else if (tamper !== undefined) throw new Problem("envelope-invalid", `unknown tamper_response ${tamper}`);
  const innerReply = await new CompactSign(enc.encode(payloadText || JSON.stringify(replyClaims)))
    .setProtectedHeader({ typ: innerTyp, alg: signer.alg, kid: signer.kid })
    .sign(signer.key);
  const jwe = await new CompactEncrypt(enc.encode(innerReply))
    .setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A256GCM", kid: encJwk.kid, cty: "JWT", typ: "exchange-response+jwe" })
    .encrypt(await importJWK(encJwk, "ECDH-ES+A256KW"));
  log({ endpoint: "service", served: service, consumer: claims.iss, tamper, jwe_bytes: jwe.length, inner_bytes: innerReply.length });
  send(response, 200, "application/jose", jwe);
}

async function handle(request, response) {
  const url = new URL(request.url, "http://localhost");
  try {
    if (request.method === "GET" && url.pathname === "/healthz") {
      send(response, 200, "application/json", '{"status":"ok"}');
    } else if (request.method === "GET" && url.pathname === "/.well-known/jwks.json") {
      send(response, 200, "application/json", JSON.stringify(state.ownJwks));
    } else if (request.method === "POST" && url.pathname === "/v1/token") {
      await tokenEndpoint(request, response);
    } else if (request.method === "POST" && url.pathname.startsWith("/v1/services/")) {
      await serviceEndpoint(request, response, decodeURIComponent(url.pathname.slice("/v1/services/".length)));
    } else {
      send(response, 404, "application/json", '{"error":"not found"}');
    }
  } catch (e) {
    if (e instanceof OAuthError) {
      log({ endpoint: url.pathname, status: e.status, error: e.error, reason: e.message });
      send(response, e.status, "application/json", JSON.stringify({ error: e.error, error_description: e.message }), {
        "cache-control": "no-store",
      });
    } else if (e instanceof Problem) {
      log({ endpoint: url.pathname, problem: e.name_, reason: e.message });
      sendProblem(response, e);
    } else {
      log({ endpoint: url.pathname, crash: String(e.stack || e) });
      if (!response.headersSent) send(response, 500, "text/plain", "internal error");
    }
  }
}

// ---------------------------------------------------------------- start

async function publishRegistry(url) {
  const c = state.config;
  const current = await verifyRegistry(await readFile(c.registry_path, "utf8"), c.authority_jwks);
  const authority = await loadSigningKey(c.authority_signing_key_pem);
  const iat = now();
  const next = {
    ...current,
    iat,
    exp: Math.max(current.exp, iat + 86400),
    serial: current.serial + 1,
    agencies: current.agencies.map((a) => (a.id === c.agency_id ? { ...a, gateway_url: url } : a)),
  };
  const mine = next.agencies.find((a) => a.id === c.agency_id);
  if (!mine) throw new Error(`registry: no agency ${c.agency_id}`);
  const kids = mine.jwks.keys.map((k) => k.kid);
  if (!kids.includes(state.sig.kid) || !kids.includes(state.enc.kid)) throw new Error("registry: our keys are not listed");
  state.ownJwks = mine.jwks;
  const jws = await new CompactSign(enc.encode(JSON.stringify(next)))
    .setProtectedHeader({ typ: "registry+jwt", alg: authority.alg, kid: authority.kid })
    .sign(authority.key);
  const tmp = `${c.registry_path}.node-tmp`;
  await writeFile(tmp, jws);
  await rename(tmp, c.registry_path);
  state.registry = next;
  return next.serial;
}

async function main() {
  const config = await readConfig();
  state.config = config;
  state.sig = await loadSigningKey(config.signing_key_pem);
  state.enc = await loadEncryptionKey(config.encryption_key_pem);
  const server = createServer((req, res) => {
    handle(req, res);
  });
  await new Promise((resolve) => server.listen(0, config.host || "127.0.0.1", resolve));
  const url = `http://${config.host || "127.0.0.1"}:${server.address().port}`;
  const serial = await publishRegistry(url);
  process.stdout.write(`${JSON.stringify({ ready: true, url, serial })}\n`);
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(`provider failed: ${e.stack || e}\n`);
  process.exit(1);
});
