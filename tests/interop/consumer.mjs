#!/usr/bin/env node
// An independent consumer of the exchange protocol, version 1.
//
// Written from /work/shared/spec/protocol.md alone, with panva/jose as the JOSE
// library; it shares no code with the Python gateway. It plays a consumer
// gateway against a provider gateway: token request (3.1), access token (3.2),
// sealed exchange request (3.3) and verification of the sealed response (3.4),
// plus a few deliberately wrong requests that must be refused with the
// problem types of 3.3/3.5.
//
// Usage: node consumer.mjs [config.json]   (config on stdin when no argument)
//
// Config (JSON object):
//   provider_url, provider_id, consumer_id, contract, service, purpose,
//   subject, body, signing_key_pem, encryption_key_pem, mode,
//   registry_jwks      the provider's public JWKS ({"keys": [...]}), and/or
//   registry_jws + authority_jwks   the signed trust registry and the
//                      registry authority's public JWKS: the provider's JWKS is
//                      then taken from the verified registry (section 2), and
//                      must list the same kids as registry_jwks when both are given;
//   end_user, client   optional claims of 3.3 (client defaults to "interop-node")
//
// Modes: exchange | replay | binding-mismatch | garbage | edge (further probes
// of 3.0-3.3, each outcome with the "expected" answer and "ok").
// Output: one JSON object per outcome on stdout, one per line.
// Exit code: 0 when every step ran (whatever the gateway answered), 1 when the
// consumer itself failed (bad config, network error, a response that does not
// verify is reported as an outcome with "verify_error", not as an exit code).

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";

import {
  CompactEncrypt,
  CompactSign,
  base64url,
  calculateJwkThumbprint,
  compactDecrypt,
  exportJWK,
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


function emit(outcome) {
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}

function readConfig() {
  const arg = process.argv[2];
  const text = arg && arg !== "-" ? readFileSync(arg, "utf8") : readFileSync(0, "utf8");
  const config = JSON.parse(text);
  for (const name of [
    "provider_url",
    "provider_id",
    "consumer_id",
    "contract",
    "service",
    "purpose",
    "subject",
    "body",
    "signing_key_pem",
    "encryption_key_pem",
    "mode",
  ]) {
    if (config[name] === undefined) throw new Error(`config: missing ${name}`);
  }
  if (!config.registry_jwks && !(config.registry_jws && config.authority_jwks)) {
    throw new Error("config: need registry_jwks, or registry_jws and authority_jwks");
  }
  config.provider_url = config.provider_url.replace(/\/+$/, "");
  return config;
}

// Section 2: the provider's keys, from the signed registry when given.
async function providerJwks(config) {
  if (!config.registry_jws) return config.registry_jwks;
  const registry = await verifyRegistry(config.registry_jws, config.authority_jwks);
  const jwks = agencyJwks(registry, config.provider_id);
  if (config.registry_jwks) {
    // Both given: the registry's copy must agree with the one we were handed.
    const a = JSON.stringify(jwks.keys.map((k) => k.kid));
    const b = JSON.stringify(config.registry_jwks.keys.map((k) => k.kid));
    if (a !== b) throw new VerifyError(`registry: provider kids ${a} differ from registry_jwks ${b}`);
  }
  return jwks;
}

// ---------------------------------------------------------------- HTTP

async function readProblem(response, text) {
  const out = { status: response.status, content_type: response.headers.get("content-type") };
  try {
    const problem = JSON.parse(text);
    out.problem_type = problem.type;
    out.title = problem.title;
    out.detail = problem.detail;
    if (problem.audit_id !== undefined) out.audit_id = problem.audit_id;
    if (problem.status !== response.status) out.problem_status = problem.status;
  } catch {
    out.raw = text.slice(0, 500);
  }
  if (response.headers.get("retry-after")) out.retry_after = response.headers.get("retry-after");
  return out;
}

// ---------------------------------------------------------------- 3.1 / 3.2

async function clientAssertion(ctx, opts = {}) {
  const iat = now();
  const claims = {
    iss: ctx.config.consumer_id,
    sub: ctx.config.consumer_id,
    aud: ctx.config.provider_id,
    jti: newJti(),
    iat,
    exp: iat + ASSERTION_LIFETIME,
    ...(opts.claims || {}),
  };
  return new CompactSign(enc.encode(JSON.stringify(claims)))
    .setProtectedHeader({ typ: opts.typ || "client-assertion+jwt", alg: opts.alg || ctx.sig.alg, kid: ctx.sig.kid })
    .sign(ctx.sig.key);
}

function authorizationDetail(config) {
  return { type: "data_exchange", contract: config.contract, service: config.service, purpose: config.purpose };
}

// POST /v1/token; returns {response, text}.
async function tokenRequest(ctx, opts = {}) {
  const fields = {
    grant_type: "client_credentials",
    client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    client_assertion: opts.assertion || (await clientAssertion(ctx, opts)),
    authorization_details: JSON.stringify([authorizationDetail(ctx.config)]),
    ...(opts.fields || {}),
  };
  const form = new URLSearchParams(fields);
  const response = await fetch(`${ctx.config.provider_url}/v1/token`, {
    method: "POST",
    headers: {
      "content-type": opts.contentType || "application/x-www-form-urlencoded",
      accept: "application/json",
    },
    body: form.toString(),
  });
  return { response, text: await response.text() };
}

function tokenError(response, text) {
  let error = {};
  try {
    error = JSON.parse(text);
  } catch {
    error = { raw: text.slice(0, 500) };
  }
  return { step: "token", status: response.status, cache_control: response.headers.get("cache-control"), ...error };
}

// Returns {token, grant, notes} or throws with the RFC 6749 error as an outcome.
async function getToken(ctx, opts = {}) {
  const { response, text } = await tokenRequest(ctx, opts);
  const cacheControl = response.headers.get("cache-control");
  if (response.status !== 200) {
    const failure = new Error("token request refused");
    failure.outcome = tokenError(response, text);
    throw failure;
  }
  const notes = [];
  if (!/\bno-store\b/i.test(cacheControl || "")) notes.push(`token response Cache-Control is ${cacheControl}`);
  if (!/^application\/json\b/i.test(response.headers.get("content-type") || "")) {
    notes.push(`token response Content-Type is ${response.headers.get("content-type")}`);
  }
  const answer = JSON.parse(text);
  requireClaims(answer, { access_token: "string", token_type: "string", expires_in: "integer", authorization_details: "array" }, "token response");
  if (answer.token_type.toLowerCase() !== "bearer") throw new VerifyError(`token_type ${answer.token_type}`);

  // 3.2: check the token as a consumer can (it is the provider's own JWT).
  const { payload } = await verifyJws(answer.access_token, ctx.providerJwks, "at+jwt", "access token");
  requireClaims(
    payload,
    {
      iss: "string",
      sub: "string",
      client_id: "string",
      aud: "string",
      iat: "integer",
      exp: "integer",
      jti: "string",
      cnf: "object",
      authorization_details: "array",
    },
    "access token",
  );
  checkFresh(payload, TOKEN_LIFETIME, "access token");
  const c = ctx.config;
  if (payload.iss !== c.provider_id || payload.aud !== c.provider_id) throw new VerifyError("access token: iss/aud");
  if (payload.sub !== c.consumer_id || payload.client_id !== c.consumer_id) throw new VerifyError("access token: sub/client_id");
  if (payload.cnf.jkt !== ctx.sig.kid) throw new VerifyError(`access token: cnf.jkt ${payload.cnf.jkt} != ${ctx.sig.kid}`);
  if (payload.authorization_details.length !== 1) throw new VerifyError("access token: authorization_details not one");
  const grant = payload.authorization_details[0];
  for (const [k, v] of Object.entries(authorizationDetail(c))) {
    if (grant[k] !== v) throw new VerifyError(`access token: grant ${k} ${grant[k]} != ${v}`);
  }
  if (!Array.isArray(grant.fields) || !Number.isInteger(grant.contract_version)) {
    throw new VerifyError("access token: grant lacks fields/contract_version");
  }
  if (JSON.stringify(answer.authorization_details) !== JSON.stringify(payload.authorization_details)) {
    notes.push("token response authorization_details differ from the token's");
  }
  return { token: answer.access_token, grant, notes };
}

// ---------------------------------------------------------------- 3.3

function requestClaims(ctx, token, overrides = {}) {
  const c = ctx.config;
  const iat = now();
  const claims = {
    iss: c.consumer_id,
    aud: c.provider_id,
    jti: newJti(),
    iat,
    exp: iat + MESSAGE_LIFETIME,
    ath: sha256b64url(token),
    svc: c.service,
    contract: c.contract,
    purpose: c.purpose,
    subject: c.subject,
    client: c.client || "interop-node",
    body: c.body,
  };
  if (c.end_user !== undefined) claims.end_user = c.end_user;
  return { ...claims, ...overrides };
}

// opts (for deliberately wrong requests only): payloadText, innerAlg, innerTyp,
// signKey {key, kid}, jweTyp, jweKid, encryptTo (a key).
async function sealRequest(ctx, claims, opts = {}) {
  const payloadText = opts.payloadText || JSON.stringify(claims);
  const signer = opts.signKey || ctx.sig;
  const inner = await new CompactSign(enc.encode(payloadText))
    .setProtectedHeader({ typ: opts.innerTyp || "exchange-request+jwt", alg: opts.innerAlg || signer.alg, kid: signer.kid })
    .sign(signer.key);
  const target = ctx.providerEnc;
  const jwe = await new CompactEncrypt(enc.encode(inner))
    .setProtectedHeader({
      alg: "ECDH-ES+A256KW",
      enc: "A256GCM",
      kid: opts.jweKid || target.kid,
      cty: "JWT",
      typ: opts.jweTyp || "exchange-request+jwe",
    })
    .encrypt(opts.encryptTo || target.key);
  return { inner, jwe, jti: claims.jti };
}

async function postExchange(ctx, token, body, extraHeaders = {}, service = ctx.config.service) {
  const headers = { "content-type": "application/jose", accept: "application/jose, application/problem+json" };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  return fetch(`${ctx.config.provider_url}/v1/services/${encodeURIComponent(service)}`, {
    method: "POST",
    headers: { ...headers, ...extraHeaders },
    body,
  });
}

// A POST whose body is written in two parts with a pause between them, as any
// slow link or large body arrives: HTTP does not promise the body in one read.
// Resolves to a fetch Response.
function postInTwoParts(urlText, headers, body, pauseMs = 150) {
  const url = new URL(urlText);
  const data = Buffer.from(body);
  const half = Math.floor(data.length / 2);
  return new Promise((resolve, reject) => {
    const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(
      url,
      { method: "POST", headers: { ...headers, "content-length": data.length } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve(new Response(Buffer.concat(chunks), { status: res.statusCode, headers: res.headers })));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.write(data.subarray(0, half));
    setTimeout(() => req.end(data.subarray(half)), pauseMs);
  });
}

// ---------------------------------------------------------------- 3.4

async function openResponse(ctx, jwe, sent, grant) {
  let decrypted;
  try {
    decrypted = await compactDecrypt(jwe, ctx.enc.key, {
      keyManagementAlgorithms: ["ECDH-ES+A256KW"],
      contentEncryptionAlgorithms: ["A256GCM"],
    });
  } catch (e) {
    throw new VerifyError(`response JWE does not decrypt (${e.code || e.message})`);
  }
  const h = decrypted.protectedHeader;
  refusedHeaderCheck(h, "response JWE");
  if (normTyp(h.typ) !== "exchange-response+jwe") throw new VerifyError(`response JWE typ ${h.typ}`);
  if (h.kid !== ctx.enc.kid) throw new VerifyError(`response JWE kid ${h.kid} != ours ${ctx.enc.kid}`);
  if (h.alg !== "ECDH-ES+A256KW" || h.enc !== "A256GCM") throw new VerifyError(`response JWE alg/enc ${h.alg}/${h.enc}`);
  if (normTyp(h.cty) !== "jwt") throw new VerifyError(`response JWE cty ${h.cty}`);
  if (!h.epk) throw new VerifyError("response JWE lacks epk");

  const innerJws = dec.decode(decrypted.plaintext);
  const { payload } = await verifyJws(innerJws, ctx.providerJwks, "exchange-response+jwt", "response JWS");
  requireClaims(
    payload,
    {
      iss: "string",
      aud: "string",
      jti: "string",
      iat: "integer",
      exp: "integer",
      in_reply_to: "string",
      req_hash: "string",
      status: "integer",
      fields: "array",
      body: "object",
      audit: "object",
    },
    "response JWS",
  );
  checkFresh(payload, MESSAGE_LIFETIME, "response JWS");
  const c = ctx.config;
  if (payload.iss !== c.provider_id) throw new VerifyError(`response iss ${payload.iss}`);
  if (payload.aud !== c.consumer_id) throw new VerifyError(`response aud ${payload.aud}`);
  if (payload.in_reply_to !== sent.jti) throw new VerifyError(`in_reply_to ${payload.in_reply_to} != ${sent.jti}`);
  const expectedHash = sha256b64url(sent.inner);
  if (payload.req_hash !== expectedHash) throw new VerifyError(`req_hash ${payload.req_hash} != ${expectedHash}`);
  const sorted = [...payload.fields].sort();
  if (JSON.stringify(sorted) !== JSON.stringify(payload.fields)) throw new VerifyError("fields not sorted");
  const allowed = new Set(grant.fields);
  for (const f of payload.fields) {
    if (!allowed.has(f)) throw new VerifyError(`field ${f} not in the contract's fields`);
  }
  if (!Number.isInteger(payload.audit.index)) throw new VerifyError("audit.index not an integer");
  return payload;
}

async function outcomeOf(ctx, response, sent, grant) {
  const contentType = response.headers.get("content-type") || "";
  if (response.status === 200) {
    const text = await response.text();
    const out = { status: 200, content_type: contentType };
    if (!/^application\/jose\b/i.test(contentType)) out.note = `200 with Content-Type ${contentType}`;
    try {
      const payload = await openResponse(ctx, text.trim(), sent, grant);
      Object.assign(out, {
        verified: true,
        backend_status: payload.status,
        body: payload.body,
        fields: payload.fields,
        in_reply_to: payload.in_reply_to,
        req_hash: payload.req_hash,
        audit_index: payload.audit.index,
      });
    } catch (e) {
      if (!(e instanceof VerifyError)) throw e;
      Object.assign(out, { verified: false, verify_error: e.message });
    }
    return out;
  }
  const out = await readProblem(response, await response.text());
  if (!/^application\/problem\+json\b/i.test(contentType)) out.note = `refusal with Content-Type ${contentType}`;
  if (typeof out.problem_type === "string" && !out.problem_type.startsWith(PROBLEM_PREFIX)) {
    out.note = `problem type outside ${PROBLEM_PREFIX}`;
  }
  return out;
}

// ---------------------------------------------------------------- modes

async function modeExchange(ctx) {
  const { token, grant, notes } = await getToken(ctx);
  const sent = await sealRequest(ctx, requestClaims(ctx, token));
  const out = await outcomeOf(ctx, await postExchange(ctx, token, sent.jwe), sent, grant);
  emit({ mode: "exchange", step: "exchange", ...(notes.length ? { token_notes: notes } : {}), ...out });
}

async function modeReplay(ctx) {
  const { token, grant } = await getToken(ctx);
  const sent = await sealRequest(ctx, requestClaims(ctx, token));
  emit({ mode: "replay", step: "first", ...(await outcomeOf(ctx, await postExchange(ctx, token, sent.jwe), sent, grant)) });
  emit({ mode: "replay", step: "second", ...(await outcomeOf(ctx, await postExchange(ctx, token, sent.jwe), sent, grant)) });
}

function otherSubject(subject) {
  // A different, same-shaped id: every digit rotated by one.
  const rotated = String(subject).replace(/[0-9]/g, (d) => String((Number(d) + 1) % 10));
  return rotated === subject ? `${subject}-other` : rotated;
}

async function modeBindingMismatch(ctx) {
  const c = ctx.config;
  const { token, grant } = await getToken(ctx);
  const variants = [];

  // `subject` differs from the body's subject field.
  variants.push(["subject", { subject: otherSubject(c.subject) }]);

  // `ath` of another (equally valid) token of ours.
  const other = await getToken(ctx);
  variants.push(["ath", { ath: sha256b64url(other.token) }]);

  // `purpose` not the token's.
  variants.push(["purpose", { purpose: `${c.purpose}-other` }]);

  // `aud` not this provider.
  variants.push(["aud", { aud: `${c.provider_id}-other` }]);

  for (const [variant, overrides] of variants) {
    const sent = await sealRequest(ctx, requestClaims(ctx, token, overrides));
    emit({ mode: "binding-mismatch", variant, ...(await outcomeOf(ctx, await postExchange(ctx, token, sent.jwe), sent, grant)) });
  }
}

async function modeGarbage(ctx) {
  const { token, grant } = await getToken(ctx);

  // Random bytes as the body, with a valid token.
  const noise = randomBytes(256);
  emit({ mode: "garbage", variant: "body", ...(await outcomeOf(ctx, await postExchange(ctx, token, noise), null, grant)) });

  // A well-formed compact JWE whose bytes are garbage.
  const fakeJwe = Array.from({ length: 5 }, () => base64url.encode(randomBytes(24))).join(".");
  emit({ mode: "garbage", variant: "jwe", ...(await outcomeOf(ctx, await postExchange(ctx, token, fakeJwe), null, grant)) });

  // A valid sealed request with a garbage bearer token.
  const garbageToken = base64url.encode(randomBytes(48));
  const sent = await sealRequest(ctx, requestClaims(ctx, garbageToken));
  emit({ mode: "garbage", variant: "token", ...(await outcomeOf(ctx, await postExchange(ctx, garbageToken, sent.jwe), sent, grant)) });

  // A valid sealed request and no Authorization header at all.
  const sent2 = await sealRequest(ctx, requestClaims(ctx, token));
  emit({ mode: "garbage", variant: "no-token", ...(await outcomeOf(ctx, await postExchange(ctx, null, sent2.jwe), sent2, grant)) });
}


// Further probes of the protocol text, each with the answer the text calls
// for. Every outcome carries "expected" and "ok".
async function modeEdge(ctx) {
  const c = ctx.config;
  const report = (variant, expected, out) => {
    const got = out.problem_type ?? out.error ?? null;
    const ok =
      out.status === expected.status &&
      (expected.type === undefined || got === expected.type) &&
      (expected.status !== 200 || out.verified !== false);
    emit({ mode: "edge", variant, expected, ok, ...out });
  };
  const tokenOutcome = async (opts) => {
    const { response, text } = await tokenRequest(ctx, opts);
    if (response.status === 200) return { step: "token", status: 200 };
    return tokenError(response, text);
  };
  const p = (name) => `${PROBLEM_PREFIX}${name}`;
  const ok200 = { status: 200 };

  // ---- token endpoint (3.1)
  report("token/alg-Ed25519", ok200, await tokenOutcome({ alg: "Ed25519" }));
  report("token/typ-prefixed-mixed-case", ok200, await tokenOutcome({ typ: "application/Client-Assertion+JWT" }));
  report(
    "token/form-charset",
    ok200,
    await tokenOutcome({ contentType: "application/x-www-form-urlencoded; charset=UTF-8" }),
  );
  const assertion = await clientAssertion(ctx);
  report("token/assertion-first-use", ok200, await tokenOutcome({ assertion }));
  report("token/assertion-reuse", { status: 401, type: "invalid_client" }, await tokenOutcome({ assertion }));
  report(
    "token/assertion-lifetime-61",
    { status: 401, type: "invalid_client" },
    await tokenOutcome({ claims: { exp: now() + ASSERTION_LIFETIME + 1, iat: now() } }),
  );
  report("token/iss-ne-sub", { status: 401, type: "invalid_client" }, await tokenOutcome({ claims: { sub: "someone-else" } }));
  report(
    "token/details-object",
    { status: 400, type: "invalid_request" },
    await tokenOutcome({ fields: { authorization_details: JSON.stringify(authorizationDetail(c)) } }),
  );
  report(
    "token/details-two",
    { status: 400, type: "invalid_request" },
    await tokenOutcome({ fields: { authorization_details: JSON.stringify([authorizationDetail(c), authorizationDetail(c)]) } }),
  );
  report(
    "token/unknown-contract",
    { status: 400, type: "invalid_authorization_details" },
    await tokenOutcome({ fields: { authorization_details: JSON.stringify([{ ...authorizationDetail(c), contract: "no-such-contract" }]) } }),
  );
  report(
    "token/purpose-not-allowed",
    { status: 400, type: "invalid_authorization_details" },
    await tokenOutcome({ fields: { authorization_details: JSON.stringify([{ ...authorizationDetail(c), purpose: "marketing" }]) } }),
  );
  {
    const form = new URLSearchParams({
      grant_type: "client_credentials",
      client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
      client_assertion: await clientAssertion(ctx),
      authorization_details: JSON.stringify([authorizationDetail(c)]),
    });
    const response = await postInTwoParts(
      `${c.provider_url}/v1/token`,
      { "content-type": "application/x-www-form-urlencoded" },
      form.toString(),
    );
    const text = await response.text();
    report("token/form-in-two-tcp-writes", ok200, response.status === 200 ? { step: "token", status: 200 } : tokenError(response, text));
  }
  report("token/grant-type", { status: 400, type: "unsupported_grant_type" }, await tokenOutcome({ fields: { grant_type: "password" } }));

  // ---- exchange (3.3 / 3.4)
  const { token, grant } = await getToken(ctx);
  const send = async (variant, expected, overrides = {}, sealOpts = {}, post = {}) => {
    const claims = requestClaims(ctx, token, overrides);
    for (const [k, v] of Object.entries(overrides)) if (v === undefined) delete claims[k];
    const sent = await sealRequest(ctx, claims, sealOpts);
    const response = await postExchange(ctx, post.token ?? token, post.body ?? sent.jwe, post.headers || {}, post.service);
    report(variant, expected, await outcomeOf(ctx, response, sent, grant));
  };
  const jwe400 = { status: 400, type: p("envelope-invalid") };

  await send("exchange/alg-Ed25519", ok200, {}, { innerAlg: "Ed25519" });
  await send("exchange/typ-prefixed-mixed-case", ok200, {}, {
    innerTyp: "application/Exchange-Request+JWT",
    jweTyp: "application/exchange-request+JWE",
  });
  await send("exchange/no-end-user", { status: 403, type: p("contract-denied") }, { end_user: undefined });
  const old = now() - 300;
  await send("exchange/stale", { status: 401, type: p("stale-message") }, { iat: old, exp: old + MESSAGE_LIFETIME });
  const t = now();
  await send("exchange/lifetime-121", { status: 401, type: p("stale-message") }, { iat: t, exp: t + MESSAGE_LIFETIME + 1 });
  await send("exchange/nbf-future", { status: 401, type: p("stale-message") }, { nbf: now() + 90 });
  {
    const claims = requestClaims(ctx, token);
    const text = JSON.stringify(claims).replace(`"iat":${claims.iat}`, `"iat":${claims.iat}.0`);
    await send("exchange/float-iat", jwe400, {}, { payloadText: text });
  }
  await send("exchange/missing-client", jwe400, { client: undefined });
  await send("exchange/subject-not-string", jwe400, { subject: 12345 });
  await send("exchange/aud-array", jwe400, { aud: [c.provider_id] });
  const stranger = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  const strangerKid = await calculateJwkThumbprint(await exportJWK(stranger.publicKey), "sha256");
  await send("exchange/kid-not-cnf-jkt", jwe400, {}, { signKey: { key: stranger.privateKey, kid: strangerKid, alg: "EdDSA" } });
  await send("exchange/signature-by-other-key", { status: 401, type: p("signature-invalid") }, {}, {
    signKey: { key: stranger.privateKey, kid: ctx.sig.kid, alg: "EdDSA" },
  });
  await send("exchange/jwe-kid-wrong", jwe400, {}, { jweKid: ctx.enc.kid });
  await send("exchange/inner-typ-response", jwe400, {}, { innerTyp: "exchange-response+jwt" });
  await send("exchange/content-type-json", jwe400, {}, {}, { headers: { "content-type": "application/json" } });
  await send("exchange/iss-other-agency", { status: 401, type: p("binding-mismatch") }, { iss: "population-registry" });
  await send("exchange/svc-other", { status: 401, type: p("binding-mismatch") }, { svc: "other-service" });
  await send("exchange/contract-other", { status: 401, type: p("binding-mismatch") }, { contract: "other-contract" });
  {
    const sent = await sealRequest(ctx, requestClaims(ctx, token));
    const response = await postInTwoParts(
      `${c.provider_url}/v1/services/${encodeURIComponent(c.service)}`,
      { "content-type": "application/jose", authorization: `Bearer ${token}` },
      sent.jwe,
    );
    report("exchange/body-in-two-tcp-writes", ok200, await outcomeOf(ctx, response, sent, grant));
  }
  await send("exchange/unknown-service-before-token", { status: 404, type: p("unknown-service") }, {}, {}, {
    service: "no-such-service",
    token: "garbage",
  });
  await send("exchange/over-contract-max-request-bytes", { status: 413, type: p("payload-too-large") }, {
    body: { ...c.body, padding: "x".repeat(70000) },
  });
  await send("exchange/over-1MiB-before-token", { status: 413, type: p("payload-too-large") }, {}, {}, {
    token: "garbage",
    body: "A".repeat(1024 * 1024 + 1),
  });
}

const MODES = {
  edge: modeEdge,
  exchange: modeExchange,
  replay: modeReplay,
  "binding-mismatch": modeBindingMismatch,
  garbage: modeGarbage,
};

let currentMode;

async function main() {
  const config = readConfig();
  currentMode = config.mode;
  const mode = MODES[config.mode];
  if (!mode) throw new Error(`unknown mode ${config.mode}; one of ${Object.keys(MODES).join(", ")}`);
  const jwks = await providerJwks(config);
  const encJwk = jwks.keys.find((k) => k.use === "enc");
  if (!encJwk || !isEncryptionJwk(encJwk)) throw new VerifyError("provider has no usable use:enc key");
  const encKid = await calculateJwkThumbprint(encJwk, "sha256");
  if (encJwk.kid !== encKid) throw new VerifyError(`provider enc kid ${encJwk.kid} is not its thumbprint ${encKid}`);
  const ctx = {
    config,
    providerJwks: jwks,
    providerEnc: { kid: encJwk.kid, key: await importJWK(encJwk, "ECDH-ES+A256KW") },
    sig: await loadSigningKey(config.signing_key_pem),
    enc: await loadEncryptionKey(config.encryption_key_pem),
  };
  await mode(ctx);
}

main().catch((e) => {
  if (e.outcome) {
    emit({ mode: currentMode, ...e.outcome });
    process.exit(0);
  }
  process.stderr.write(`consumer failed: ${e.stack || e}\n`);
  if (e instanceof VerifyError) emit({ step: "setup", verify_error: e.message });
  process.exit(1);
});
