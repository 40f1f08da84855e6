// A real OpenID Provider for the SSO tests: node-oidc-provider (a certified implementation) on a loopback
// port, with one confidential client (Portico), accounts whose groups the test sets, and its development
// login and consent pages (any password is accepted: the provider is what is under test, not its users).
//
// Test controls (loopback only, this process only): POST /__test/mode {"mode": "..."} makes the token
// endpoint answer with a forged ID token ("tamper": the payload changed after signing; "aud": re-signed
// with the provider's own key for another audience; "" back to normal); POST /__test/groups
// {"account", "groups"} changes an account's groups; POST /__test/rotate replaces the signing key (a new
// key id), as a provider rotating its keys does.
//
// Env: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, ACCOUNTS (JSON {account: [groups]}).
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const env = process.env;
const issuer = `http://127.0.0.1:${env.PORT}`;
const accounts = JSON.parse(env.ACCOUNTS || '{}');
let mode = '';
let key = newKey();
let provider = makeProvider();

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k-${crypto.randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
}

function makeProvider() {
  const p = new Provider(issuer, {
    clients: [{
      client_id: env.CLIENT_ID,
      client_secret: env.CLIENT_SECRET,
      redirect_uris: [env.REDIRECT_URI],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [key] },
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'], email: ['email'], groups: ['groups'] },
    cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
    pkce: { required: () => true },
    async findAccount(_ctx, sub) {
      if (!(sub in accounts)) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, preferred_username: sub, name: sub, email: `${sub}@idp.test`, groups: accounts[sub] };
        },
      };
    },
  });
  p.proxy = false;
  // The development pages import a web font from the internet: the tests send nothing off this machine.
  p.use(async (ctx, next) => {
    await next();
    if (typeof ctx.body === 'string' && ctx.type.includes('html')) {
      ctx.body = ctx.body.replace(/@import url\([^)]*\);/g, '');
    }
    if (ctx.path === '/token' && ctx.status === 200 && mode && ctx.body && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: await forge(ctx.body.id_token) };
      console.log(`token endpoint: id token forged (${mode})`);
    }
  });
  return p;
}

async function forge(idToken) {
  const [h, payload] = idToken.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  if (mode === 'tamper') {
    claims.groups = ['portico-admins'];
    claims.sub = 'admin';
    const forged = Buffer.from(JSON.stringify(claims)).toString('base64url');
    return [h, forged, idToken.split('.')[2]].join('.');
  }
  if (mode === 'aud') {
    claims.aud = 'another-client';
    const k = await jose.importJWK(key, 'RS256');
    return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: key.kid }).sign(k);
  }
  throw new Error(`unknown mode ${mode}`);
}

function body(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; if (data.length > 65536) reject(new Error('too large')); });
    req.on('end', () => { try { resolve(JSON.parse(data || '{}')); } catch (e) { reject(e); } });
  });
}

const server = http.createServer(async (req, res) => {
  if (req.url.startsWith('/__test/') && req.method === 'POST') {
    try {
      const b = await body(req);
      if (req.url === '/__test/mode') mode = b.mode || '';
      else if (req.url === '/__test/groups') accounts[b.account] = b.groups;
      else if (req.url === '/__test/rotate') { key = newKey(); provider = makeProvider(); }
      else throw new Error('unknown control');
      console.log(`control ${req.url} ${JSON.stringify(b)} kid=${key.kid}`);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, kid: key.kid }));
    } catch (e) {
      res.writeHead(400);
      res.end(String(e));
    }
    return;
  }
  provider.callback()(req, res);
});
server.listen(Number(env.PORT), '127.0.0.1', () => console.log(`oidc provider listening on ${issuer}`));
