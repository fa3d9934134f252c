// Login pages in headless Chromium: single sign-on across hosts, TOTP
// enrolment and login, step-up, signing out everywhere. Started by
// tests/tests/login_browser.rs with a running gateway on HEXON_PORT.
import { chromium } from 'playwright-core';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const port = process.env.HEXON_PORT;
const password = process.env.HEXON_PASSWORD;
const shots = process.env.HEXON_SCREENSHOTS; // optional: where to save screenshots
const url = (host, p) => `http://${host}.localhost:${port}${p}`;

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

function base32(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of s.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

// RFC 6238, written independently of the gateway's implementation.
function totp(secret, offsetSteps = 0) {
  const step = Math.floor(Date.now() / 1000 / 30) + offsetSteps;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const h = crypto.createHmac('sha1', base32(secret)).update(msg).digest();
  const o = h[19] & 0xf;
  const bin = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(bin % 1000000).padStart(6, '0');
}

async function shot(page, name) {
  if (!shots) return;
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function upstreamSaw(page) {
  const text = await page.textContent('body');
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`expected the upstream's JSON at ${page.url()}, got: ${text.slice(0, 300)}`);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP *.localhost 127.0.0.1',
  ],
});
try {
  const one = await browser.newContext({ viewport: { width: 520, height: 820 } });
  const page = await one.newPage();

  // 1. A protected page sends the browser to the login host.
  await page.goto(url('app', '/hello?x=1'));
  check(page.url().startsWith(url('auth', '/login?rd=')), `login redirect, at ${page.url()}`);
  check(await page.getByLabel('Username').evaluate((e) => e === document.activeElement), 'username has focus');
  await shot(page, 'login');

  // A wrong password: a readable error, announced.
  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  check((await page.getByRole('alert').textContent()).includes('Wrong username or password'), 'error shown');
  await shot(page, 'login-error');

  // With the keyboard only: type, Enter.
  await page.getByLabel('Password').fill(password);
  await page.getByLabel('Password').press('Enter');
  await page.waitForURL(url('app', '/hello?x=1'));
  let saw = await upstreamSaw(page);
  check(saw.headers['hexon-user'][0] === 'alice', 'app sees alice');

  // 2. Single sign-on: a second host, no form.
  await page.goto(url('app2', '/two'));
  await page.waitForURL(url('app2', '/two'));
  saw = await upstreamSaw(page);
  check(saw.headers['hexon-user'][0] === 'alice', 'app2 sees alice');
  const cookies = await one.cookies();
  const app = cookies.find((c) => c.name === '__Host-hexon-session' && c.domain === 'app.localhost');
  check(app && app.httpOnly && app.secure && app.sameSite === 'Lax', 'app cookie is host-only, HttpOnly, Secure, Lax');

  // 3. TOTP enrolment from the account page.
  await page.goto(url('auth', '/account'));
  await shot(page, 'account');
  await page.getByRole('link', { name: 'Set it up' }).click();
  const secret = (await page.locator('#secret').textContent()).trim();
  check(/^[A-Z2-7]{32}$/.test(secret), `a base32 key, got ${secret}`);
  await shot(page, 'totp-enrol');
  await page.getByLabel('Code from the app').fill(totp(secret));
  await page.getByRole('button', { name: 'Turn on' }).click();
  const codes = await page.locator('#recovery-codes li').allTextContents();
  check(codes.length === 10, 'ten recovery codes');
  await shot(page, 'recovery-codes');

  // 3b. A passkey, on Chromium's virtual authenticator (resident keys,
  // user verification).
  const cdp = await one.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  await page.goto(url('auth', '/account'));
  await page.getByLabel('Name for a new passkey').fill('Laptop');
  await page.getByRole('button', { name: 'Add a passkey' }).click();
  await page.getByRole('button', { name: 'Remove passkey Laptop' }).waitFor();
  await shot(page, 'account-passkey');

  // 4. A second browser: password, then TOTP.
  const two = await browser.newContext({ viewport: { width: 520, height: 820 } });
  const page2 = await two.newPage();
  await page2.goto(url('admin', '/ops'));
  await page2.getByLabel('Username').fill('alice');
  await page2.getByLabel('Password').fill(password);
  await page2.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page2.getByLabel('Code').waitFor();
  await shot(page2, 'totp-login');
  await page2.getByLabel('Code').fill(totp(secret, 1));
  await page2.getByRole('button', { name: 'Verify' }).click();
  await page2.waitForURL(url('admin', '/ops'));
  saw = await upstreamSaw(page2);
  check(/totp=\d+/.test(saw.headers['hexon-auth'][0]), `TOTP in Hexon-Auth: ${saw.headers['hexon-auth'][0]}`);

  // 5. Step-up: a route wanting a password within 2 s asks again, then
  // returns to where the user was.
  await page2.waitForTimeout(3000);
  await page2.goto(url('recent', '/fresh'));
  await page2.getByText('Please confirm your password').waitFor();
  await shot(page2, 'step-up');
  await page2.getByLabel('Password').fill(password);
  await page2.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page2.waitForURL(url('recent', '/fresh'));
  saw = await upstreamSaw(page2);
  check(saw.headers['hexon-user'][0] === 'alice', 'step-up returned to the route');

  // 5b. Sign out of the login host in the first browser, then sign in
  // with the passkey alone (no username) on a host it has no session for.
  await page.goto(url('auth', '/account'));
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.getByText('You are signed out.').waitFor();
  await page.goto(url('app3', '/p'));
  check(page.url().startsWith(url('auth', '/login')), `login page for app3, at ${page.url()}`);
  await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
  await page.waitForURL(url('app3', '/p'));
  saw = await upstreamSaw(page);
  check(/^webauthn=\d+$/.test(saw.headers['hexon-auth'][0]), `passkey in Hexon-Auth: ${saw.headers['hexon-auth'][0]}`);
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
  check(credentials.length === 1 && credentials[0].isResidentCredential, 'one discoverable credential');
  check(credentials[0].signCount >= 1, `the sign count moved: ${credentials[0].signCount}`);

  // 6. Sign out everywhere (from the first browser) ends the second's
  // sessions too.
  await page.goto(url('auth', '/account'));
  await page.getByRole('button', { name: 'Sign out everywhere' }).click();
  await page.getByText('You are signed out.').waitFor();
  await page2.goto(url('admin', '/ops'));
  check(page2.url().startsWith(url('auth', '/login')), `second browser signed out, at ${page2.url()}`);
  await page.goto(url('app2', '/two'));
  check(page.url().startsWith(url('auth', '/login')), `first browser signed out of app2, at ${page.url()}`);
  console.log('browser login flow: ok');
} catch (e) {
  // Say where the browser was and what it showed.
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      const text = await p.textContent('body').catch(() => '(no body)');
      console.error(`page at ${p.url()}: ${String(text).replace(/\s+/g, ' ').slice(0, 400)}`);
    }
  }
  throw e;
} finally {
  await browser.close();
}
