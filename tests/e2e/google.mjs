// Google, played on a free 127.0.0.1 port for the e2e world's pushes: the OAuth2 token endpoint
// (a JWT-bearer grant, RS256-signed with the test-only service account's key, checked for its
// issuer, scope, audience and times) and FCM HTTP v1 `messages:send` (Bearer token issued here,
// the v1 message shape, a data map of strings). It answers as Google does and records every FCM
// message; anything it refuses is kept in `refusals` for the test to assert there are none.
// The same contract as tests/support/push_standins.rs, which the Rust tests use.

import { createPublicKey, createVerify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'push');
const PRIVATE_KEY = readFileSync(path.join(fixtures, 'test-only-fcm-service-account.key.pem'), 'utf8');
const PUBLIC_KEY = createPublicKey(readFileSync(path.join(fixtures, 'test-only-fcm-service-account.pub.pem'), 'utf8'));
export const PROJECT_ID = 'mpr-test-project';
const CLIENT_EMAIL = 'mpr-test@mpr-test-project.iam.gserviceaccount.com';
const FCM_SCOPE = 'https://www.googleapis.com/auth/firebase.messaging';

const base64url = (text) => Buffer.from(text, 'base64url');

/** The JWT's claims when its RS256 signature is the service account's, else throws why not. */
function verifiedClaims(jwt) {
  const [header, payload, signature] = String(jwt).split('.');
  if (!signature) throw new Error('not a JWT');
  if (JSON.parse(base64url(header)).alg !== 'RS256') throw new Error('alg');
  const verify = createVerify('RSA-SHA256');
  verify.update(`${header}.${payload}`);
  if (!verify.verify(PUBLIC_KEY, base64url(signature))) throw new Error('signature');
  return JSON.parse(base64url(payload));
}

/** Starts the stand-in; `serviceAccountFile(dir)` writes a service account whose token_uri is here. */
export async function startGoogle() {
  const issued = new Set();
  const messages = [];
  const refusals = [];
  let port;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const answer = (status, json) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(json));
      };
      const refuse = (status, why, json) => {
        refusals.push(`${req.url}: ${why}`);
        answer(status, json);
      };
      if (req.method === 'POST' && req.url === '/token') {
        if (req.headers['content-type'] !== 'application/x-www-form-urlencoded') return refuse(400, 'content-type', { error: 'invalid_request' });
        const form = new URLSearchParams(body);
        if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') return refuse(400, 'grant_type', { error: 'unsupported_grant_type' });
        let claims;
        try {
          claims = verifiedClaims(form.get('assertion'));
        } catch (error) {
          return refuse(400, `assertion: ${error.message}`, { error: 'invalid_grant' });
        }
        const now = Date.now() / 1000;
        const why = claims.iss !== CLIENT_EMAIL ? 'iss' : claims.scope !== FCM_SCOPE ? 'scope'
          : claims.aud !== `http://127.0.0.1:${port}/token` ? 'aud' : !(claims.exp > now && claims.iat <= now + 60) ? 'times' : null;
        if (why) return refuse(400, why, { error: 'invalid_grant', error_description: why });
        const token = `ya29.e2e-${issued.size + 1}`;
        issued.add(token);
        return answer(200, { access_token: token, expires_in: 3599, token_type: 'Bearer' });
      }
      if (req.method === 'POST' && req.url === `/v1/projects/${PROJECT_ID}/messages:send`) {
        const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
        if (!issued.has(bearer)) return refuse(401, 'bearer', { error: { code: 401, status: 'UNAUTHENTICATED' } });
        let message;
        try {
          message = JSON.parse(body).message;
        } catch {
          return refuse(400, 'body is not JSON', { error: { code: 400, status: 'INVALID_ARGUMENT' } });
        }
        const data = message?.data ?? {};
        if (typeof message?.token !== 'string' || !message.token || Object.values(data).some((v) => typeof v !== 'string')) {
          return refuse(400, 'message shape', { error: { code: 400, status: 'INVALID_ARGUMENT' } });
        }
        messages.push(message);
        return answer(200, { name: `projects/${PROJECT_ID}/messages/${messages.length}` });
      }
      refuse(404, `${req.method} ${req.url}`, { error: { code: 404, status: 'NOT_FOUND' } });
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  // Never what keeps a test process alive (a world that failed to start leaves it open).
  server.unref();
  port = server.address().port;
  return {
    url: `http://127.0.0.1:${port}`,
    messages,
    refusals,
    /** Writes the service-account JSON FIREBASE_CFG_FILE names; returns its path. */
    serviceAccountFile(dir) {
      const file = path.join(dir, 'firebase.json');
      writeFileSync(file, JSON.stringify({
        type: 'service_account', project_id: PROJECT_ID, private_key_id: 'test-key-id-1', private_key: PRIVATE_KEY,
        client_email: CLIENT_EMAIL, client_id: '1234567890', token_uri: `http://127.0.0.1:${port}/token`,
      }));
      return file;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
