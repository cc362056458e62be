#!/usr/bin/env node
// Verify idgate's identity JWT (the X-Idgate-Assertion header) with Node.js alone
// (node:crypto and fetch, Node 18 or later): no packages needed.
//
//   IDGATE_JWKS_URL=http://127.0.0.1:9090/.well-known/jwks.json node verify.js <token>
//
// Prints the verified claims as JSON; exits 1 if the token is not valid.
'use strict';
const crypto = require('node:crypto');

const JWKS_URL = process.env.IDGATE_JWKS_URL || 'http://127.0.0.1:9090/.well-known/jwks.json';
const AUDIENCE = process.env.IDGATE_AUDIENCE || 'legacy-app';
const LEEWAY = 60; // seconds of clock skew tolerated

// Which key type each algorithm must use: refusing mismatches closes the door on
// algorithm-confusion attacks ("none", HMAC with a public key as the secret).
const KEY_TYPE = { EdDSA: 'OKP', ES256: 'EC', RS256: 'RSA' };

let keys = null;
async function jwks(refresh) {
  if (!keys || refresh) {
    const res = await fetch(JWKS_URL);
    if (!res.ok) throw new Error(`JWKS fetch failed: ${res.status}`);
    keys = (await res.json()).keys;
  }
  return keys;
}

const b64 = (s) => Buffer.from(s, 'base64url');

async function verify(token) {
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error('malformed token');
  const [h, p, s] = parts;
  const header = JSON.parse(b64(h));
  const claims = JSON.parse(b64(p));
  let jwk = (await jwks(false)).find((k) => k.kid === header.kid);
  if (!jwk) jwk = (await jwks(true)).find((k) => k.kid === header.kid); // key rotated
  if (!jwk) throw new Error('unknown key id');
  if (KEY_TYPE[header.alg] !== jwk.kty) throw new Error(`unexpected algorithm ${header.alg}`);
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`);
  const sig = b64(s);
  const ok =
    header.alg === 'EdDSA'
      ? crypto.verify(null, data, key, sig)
      : header.alg === 'ES256'
        ? crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)
        : crypto.verify('sha256', data, key, sig);
  if (!ok) throw new Error('bad signature');
  const now = Math.floor(Date.now() / 1000);
  if (claims.iss !== 'idgate') throw new Error('wrong issuer');
  if (claims.aud !== AUDIENCE) throw new Error('wrong audience');
  if (!(typeof claims.exp === 'number' && claims.exp + LEEWAY > now)) throw new Error('expired');
  if (!(typeof claims.iat === 'number' && claims.iat - LEEWAY <= now)) throw new Error('issued in the future');
  return claims;
}

// In an Express app:
//   const claims = await verify(req.get('X-Idgate-Assertion'));
//   const { sub: userId, group_id: groupId } = claims;

module.exports = { verify };

if (require.main === module) {
  verify(process.argv[2] || '')
    .then((claims) => console.log(JSON.stringify(claims)))
    .catch((e) => {
      console.error(`invalid token: ${e.message}`);
      process.exit(1);
    });
}
