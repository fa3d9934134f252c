// Hexon login host: passkeys. The only script the login pages use; every
// other step works without JavaScript. Buttons stay hidden where the
// browser cannot do WebAuthn.
(() => {
  'use strict';
  const enc = (buf) =>
    btoa(String.fromCharCode(...new Uint8Array(buf)))
      .replace(/\+/g, '-')
      .replace(/\//g, '_')
      .replace(/=+$/, '');
  const dec = (s) =>
    Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4)), (c) =>
      c.charCodeAt(0),
    );

  const errorBox = document.getElementById('passkey-error');
  const showError = (message) => {
    if (!errorBox) return;
    errorBox.textContent = message;
    errorBox.hidden = false;
    errorBox.focus?.();
  };

  async function call(url, csrf, body) {
    const res = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
      body: JSON.stringify(body ?? {}),
    });
    const json = await res.json().catch(() => ({ error: 'Unexpected answer from the server.' }));
    if (!res.ok || json.error) throw new Error(json.error || 'Something went wrong.');
    return json;
  }

  function creationOptions(o) {
    const pk = o.publicKey;
    pk.challenge = dec(pk.challenge);
    pk.user.id = dec(pk.user.id);
    for (const c of pk.excludeCredentials ?? []) c.id = dec(c.id);
    return { publicKey: pk };
  }

  function requestOptions(o) {
    const pk = o.publicKey;
    pk.challenge = dec(pk.challenge);
    for (const c of pk.allowCredentials ?? []) c.id = dec(c.id);
    return { publicKey: pk };
  }

  const registration = (c) => ({
    id: c.id,
    rawId: enc(c.rawId),
    type: c.type,
    response: {
      attestationObject: enc(c.response.attestationObject),
      clientDataJSON: enc(c.response.clientDataJSON),
    },
    extensions: {},
  });

  const assertion = (c) => ({
    id: c.id,
    rawId: enc(c.rawId),
    type: c.type,
    response: {
      authenticatorData: enc(c.response.authenticatorData),
      clientDataJSON: enc(c.response.clientDataJSON),
      signature: enc(c.response.signature),
      userHandle: c.response.userHandle ? enc(c.response.userHandle) : null,
    },
    extensions: {},
  });

  const supported = typeof window.PublicKeyCredential === 'function' && navigator.credentials;

  const login = document.getElementById('passkey-login');
  if (login && supported) {
    login.hidden = false;
    login.addEventListener('click', async () => {
      login.disabled = true;
      try {
        const options = await call('/webauthn/login/begin', login.dataset.csrf);
        const credential = await navigator.credentials.get(requestOptions(options));
        const done = await call('/webauthn/login/finish', login.dataset.csrf, assertion(credential));
        window.location.assign(done.redirect);
      } catch (e) {
        showError(e.name === 'NotAllowedError' ? 'The passkey prompt was closed or timed out.' : e.message);
        login.disabled = false;
      }
    });
  }

  const register = document.getElementById('passkey-register');
  if (register && supported) {
    register.hidden = false;
    register.addEventListener('click', async () => {
      register.disabled = true;
      try {
        const label = document.getElementById('passkey-label')?.value ?? '';
        const options = await call('/webauthn/register/begin', register.dataset.csrf, { label });
        // Not signed in recently enough: confirm it is you first.
        if (options.redirect) return window.location.assign(options.redirect);
        const credential = await navigator.credentials.create(creationOptions(options));
        const done = await call('/webauthn/register/finish', register.dataset.csrf, registration(credential));
        window.location.assign(done.redirect);
      } catch (e) {
        showError(e.name === 'NotAllowedError' ? 'The passkey prompt was closed or timed out.' : e.message);
        register.disabled = false;
      }
    });
  }
})();
