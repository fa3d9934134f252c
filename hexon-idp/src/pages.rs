//! Server-rendered pages: plain HTML forms that work without JavaScript,
//! labelled fields, visible focus, readable errors announced to screen
//! readers, a layout that fits a phone. Every value is escaped.

use std::fmt::Write as _;

use hexon_core::config::BrandConfig;

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page around `body`.
pub fn layout(brand: &BrandConfig, title: &str, body: &str) -> String {
    let logo = brand.logo_url.as_deref().map_or_else(String::new, |u| {
        format!("<img class=\"logo\" src=\"{}\" alt=\"\">", esc(u))
    });
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} · {name}</title>
<style>
:root {{ --accent: {accent}; --bg: {bg}; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
  background: var(--bg); color: #1b1f24; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }}
main {{ background: #fff; width: 100%; max-width: 26rem; margin: 1rem; padding: 2rem;
  border-radius: 12px; box-shadow: 0 2px 16px rgba(0,0,0,.08); }}
header {{ display: flex; align-items: center; gap: .75rem; margin-bottom: 1.25rem; }}
.logo {{ height: 2rem; }}
.brand {{ font-weight: 600; }}
h1 {{ font-size: 1.4rem; margin: 0 0 1rem; }}
label {{ display: block; font-weight: 600; margin: 1rem 0 .25rem; }}
input[type=text], input[type=password], input[type=email] {{ width: 100%; padding: .65rem .75rem;
  font-size: 1rem; border: 1px solid #8a94a3; border-radius: 8px; }}
input:focus, button:focus, a:focus {{ outline: 3px solid var(--accent); outline-offset: 2px; }}
button {{ margin-top: 1.25rem; width: 100%; padding: .7rem; font-size: 1rem; font-weight: 600;
  color: #fff; background: var(--accent); border: 0; border-radius: 8px; cursor: pointer; }}
button.secondary {{ background: #fff; color: var(--accent); border: 1px solid var(--accent); }}
a {{ color: var(--accent); }}
.error {{ background: #fdecea; color: #8a1c12; border-radius: 8px; padding: .6rem .8rem; }}
.notice {{ background: #e8f3ec; color: #1d5b33; border-radius: 8px; padding: .6rem .8rem; }}
.hint {{ color: #4d5663; font-size: .9rem; }}
.qr svg {{ width: 100%; max-width: 220px; height: auto; display: block; margin: 0 auto; }}
code, .codes {{ font-family: ui-monospace, monospace; overflow-wrap: anywhere; }}
.codes {{ columns: 2; padding-left: 1.2rem; }}
table {{ width: 100%; border-collapse: collapse; font-size: .9rem; table-layout: fixed; }}
td, th {{ text-align: left; padding: .3rem .2rem; border-bottom: 1px solid #e3e6ea; overflow-wrap: anywhere; vertical-align: top; }}
</style>
</head>
<body>
<main>
<header>{logo}<span class="brand">{name}</span></header>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
        name = esc(&brand.name),
        accent = esc(&brand.accent_color),
        bg = esc(&brand.background_color),
    )
}

fn alert(error: Option<&str>, notice: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(e) = error {
        let _ = write!(
            s,
            "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
            esc(e)
        );
    }
    if let Some(n) = notice {
        let _ = write!(s, "<p class=\"notice\" role=\"status\">{}</p>", esc(n));
    }
    s
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// The username and password form.
pub fn login(
    brand: &BrandConfig,
    csrf: &str,
    username: &str,
    error: Option<&str>,
    notice: Option<&str>,
    email: bool,
) -> String {
    let described = if error.is_some() {
        " aria-describedby=\"error\""
    } else {
        ""
    };
    let autofocus_user = if username.is_empty() {
        " autofocus"
    } else {
        ""
    };
    let autofocus_pw = if username.is_empty() {
        ""
    } else {
        " autofocus"
    };
    let body = format!(
        r#"<h1>Sign in</h1>
{alert}
<form method="post" action="/login">
{csrf}
<label for="username">Username</label>
<input type="text" id="username" name="username" value="{username}" autocomplete="username" autocapitalize="none" spellcheck="false" required{autofocus_user}{described}>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required{autofocus_pw}{described}>
<button type="submit">Sign in</button>
</form>
{passkey}
{email}"#,
        alert = alert(error, notice),
        csrf = hidden("csrf", csrf),
        username = esc(username),
        passkey = passkey_button(csrf, "Sign in with a passkey"),
        email = if email {
            format!(
                r#"<form method="post" action="/login/email">
{}
<label for="who">Or get a sign-in code by email: username or email address</label>
<input type="text" id="who" name="who" autocomplete="username" autocapitalize="none" spellcheck="false" required>
<button type="submit" class="secondary">Email me a code</button>
</form>"#,
                hidden("csrf", csrf)
            )
        } else {
            String::new()
        },
    );
    layout(brand, "Sign in", &body)
}

/// After asking for an email: enter the code (or open the link).
pub fn email_sent(brand: &BrandConfig, csrf: &str, minutes: u64, error: Option<&str>) -> String {
    let body = format!(
        r#"<h1>Check your email</h1>
{alert}
<p>If the account exists and has an email address, a message with a 6-digit code and a sign-in link is on its way. Both work for {minutes} minutes, once; the link only in this browser.</p>
<form method="post" action="/login/email/code">
{csrf}
<label for="email-code">Code from the email</label>
<input type="text" id="email-code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required autofocus>
<button type="submit">Sign in</button>
</form>
<p><a href="/login">Start again</a></p>"#,
        alert = alert(error, None),
        csrf = hidden("csrf", csrf),
    );
    layout(brand, "Check your email", &body)
}

/// The passkey button (shown by the script where the browser can do
/// WebAuthn), with the script and where its errors go.
fn passkey_button(csrf: &str, label: &str) -> String {
    format!(
        r#"<p class="error" role="alert" id="passkey-error" hidden></p>
<button type="button" id="passkey-login" class="secondary" data-csrf="{}" hidden>{}</button>
<script src="/static/webauthn.js" defer></script>"#,
        esc(csrf),
        esc(label)
    )
}

/// Which second steps the user can take.
#[derive(Clone, Copy, Debug, Default)]
pub struct SecondFactors {
    /// A code from an authenticator app (or a recovery code).
    pub totp: bool,
    /// A passkey or security key.
    pub passkey: bool,
}

/// The second step: a code from the authenticator app (or a recovery
/// code), or a passkey.
pub fn totp(
    brand: &BrandConfig,
    csrf: &str,
    username: &str,
    factors: SecondFactors,
    error: Option<&str>,
) -> String {
    let described = if error.is_some() {
        " aria-describedby=\"error\""
    } else {
        ""
    };
    let code_form = if factors.totp {
        format!(
            r#"<p>Enter the 6-digit code from your authenticator app for <strong>{username}</strong>.</p>
<form method="post" action="/login/totp">
{csrf}
<label for="code">Code</label>
<input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="32" required autofocus{described}>
<p class="hint">Lost your phone? Enter one of your recovery codes instead.</p>
<button type="submit">Verify</button>
</form>"#,
            csrf = hidden("csrf", csrf),
            username = esc(username),
        )
    } else {
        format!(
            "<p>Confirm it is you, <strong>{}</strong>, with your passkey.</p>",
            esc(username)
        )
    };
    let passkey = if factors.passkey {
        passkey_button(csrf, "Use a passkey")
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Two-step verification</h1>\n{alert}\n{code_form}\n{passkey}",
        alert = alert(error, None),
    );
    layout(brand, "Two-step verification", &body)
}

/// What the account page shows.
#[derive(Clone, Debug, Default)]
pub struct Account<'a> {
    /// Login name.
    pub username: &'a str,
    /// Display name.
    pub display_name: Option<&'a str>,
    /// Methods used in this session, with how long ago.
    pub methods: Vec<(String, String)>,
    /// Whether TOTP is set up.
    pub totp: bool,
    /// Unused recovery codes left.
    pub recovery_left: usize,
    /// Passkeys: credential id, label, when added (text).
    pub passkeys: Vec<(String, String, String)>,
    /// Signed-in browsers, newest first.
    pub sessions: Vec<SessionRow>,
}

/// One sign-in (a browser) and the hosts it has sessions on.
#[derive(Clone, Debug, Default)]
pub struct SessionRow {
    /// Its handle (what ending it names).
    pub family: String,
    /// Hosts, comma-separated.
    pub hosts: String,
    /// When it signed in.
    pub since: String,
    /// From which address.
    pub from: String,
    /// Its user agent.
    pub agent: String,
    /// Whether it is the browser showing the page.
    pub current: bool,
}

/// The signed-in user's page: who, how, and what they can change.
pub fn account(
    brand: &BrandConfig,
    csrf: &str,
    a: &Account<'_>,
    error: Option<&str>,
    notice: Option<&str>,
) -> String {
    let mut methods = String::new();
    for (m, ago) in &a.methods {
        let _ = write!(methods, "<tr><td>{}</td><td>{}</td></tr>", esc(m), esc(ago));
    }
    let mut sessions = String::from(
        "<table aria-label=\"Where you are signed in\"><tr><th>Since</th><th>Where</th><th></th></tr>",
    );
    for r in &a.sessions {
        let action = if r.current {
            "this browser".to_owned()
        } else {
            format!(
                r#"<form method="post" action="/account/sessions/end">{}{}<button type="submit" class="secondary" aria-label="End the session since {}">End</button></form>"#,
                hidden("csrf", csrf),
                hidden("family", &r.family),
                esc(&r.since)
            )
        };
        let _ = write!(
            sessions,
            "<tr><td>{}<br><span class=\"hint\">{} · {}</span></td><td>{}</td><td>{action}</td></tr>",
            esc(&r.since),
            esc(&r.from),
            esc(&r.agent),
            esc(&r.hosts),
        );
    }
    sessions.push_str("</table>");
    let passkeys = if a.passkeys.is_empty() {
        "<p>No passkeys yet.</p>".to_owned()
    } else {
        let mut t = String::from(
            "<table aria-label=\"Your passkeys\"><tr><th>Name</th><th>Added</th><th></th></tr>",
        );
        for (id, label, added) in &a.passkeys {
            let _ = write!(
                t,
                r#"<tr><td>{label}</td><td>{added}</td><td><form method="post" action="/account/passkeys/remove">{csrf}{id}<button type="submit" class="secondary" aria-label="Remove passkey {label}">Remove</button></form></td></tr>"#,
                label = esc(label),
                added = esc(added),
                csrf = hidden("csrf", csrf),
                id = hidden("id", id),
            );
        }
        t.push_str("</table>");
        t
    };
    let totp = if a.totp {
        format!(
            r#"<p>Two-step verification is <strong>on</strong> ({left} recovery codes left).</p>
<form method="post" action="/account/totp/disable">{csrf}
<label for="disable-code">Current code to turn it off</label>
<input type="text" id="disable-code" name="code" inputmode="numeric" autocomplete="one-time-code" required>
<button type="submit" class="secondary">Turn off two-step verification</button></form>"#,
            left = a.recovery_left,
            csrf = hidden("csrf", csrf)
        )
    } else {
        "<p>Two-step verification is <strong>off</strong>. <a href=\"/account/totp\">Set it up</a></p>"
            .to_owned()
    };
    let body = format!(
        r#"<h1>{who}</h1>
{alert}
<table aria-label="How you signed in"><tr><th>Method</th><th>When</th></tr>{methods}</table>
<h2>Two-step verification</h2>
{totp}
<h2>Where you are signed in</h2>
{sessions}
<h2>Passkeys</h2>
{passkeys}
<p class="error" role="alert" id="passkey-error" hidden></p>
<label for="passkey-label">Name for a new passkey</label>
<input type="text" id="passkey-label" name="label" maxlength="64" placeholder="e.g. Laptop">
<button type="button" id="passkey-register" class="secondary" data-csrf="{csrf_value}" hidden>Add a passkey</button>
<script src="/static/webauthn.js" defer></script>
<h2>Password</h2>
<form method="post" action="/account/password">{csrf}
<label for="current">Current password</label>
<input type="password" id="current" name="current" autocomplete="current-password" aria-describedby="current-hint">
<p class="hint" id="current-hint">Forgot it? Sign in with an email code, a passkey or your authenticator app, then leave this empty (within 10 minutes).</p>
<label for="new">New password</label>
<input type="password" id="new" name="new" autocomplete="new-password" required>
<label for="confirm">New password again</label>
<input type="password" id="confirm" name="confirm" autocomplete="new-password" required>
<button type="submit" class="secondary">Change password</button>
</form>
<h2>Sign out</h2>
<form method="post" action="/logout">{csrf}
<button type="submit">Sign out</button>
<button type="submit" name="everywhere" value="1" class="secondary">Sign out everywhere</button>
</form>"#,
        who = esc(a.display_name.unwrap_or(a.username)),
        alert = alert(error, notice),
        csrf = hidden("csrf", csrf),
        csrf_value = esc(csrf),
    );
    layout(brand, "Your account", &body)
}

/// TOTP enrolment: the QR code, the secret as text, and a code to confirm.
pub fn enrol_totp(
    brand: &BrandConfig,
    csrf: &str,
    qr_svg: &str,
    secret: &str,
    error: Option<&str>,
) -> String {
    let body = format!(
        r#"<h1>Set up two-step verification</h1>
{alert}
<p>Scan this code with an authenticator app, or type the key below.</p>
<div class="qr" role="img" aria-label="QR code of the key">{qr_svg}</div>
<p>Key: <code id="secret">{secret}</code></p>
<form method="post" action="/account/totp">{csrf}
<label for="code">Code from the app</label>
<input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required autofocus>
<button type="submit">Turn on</button>
</form>
<p><a href="/account">Cancel</a></p>"#,
        alert = alert(error, None),
        csrf = hidden("csrf", csrf),
        secret = esc(secret),
    );
    layout(brand, "Set up two-step verification", &body)
}

/// Recovery codes, shown once.
pub fn recovery_codes(brand: &BrandConfig, codes: &[String]) -> String {
    let mut list = String::new();
    for c in codes {
        let _ = write!(list, "<li>{}</li>", esc(c));
    }
    let body = format!(
        r#"<h1>Save your recovery codes</h1>
<p class="notice" role="status">Two-step verification is on.</p>
<p>Each code signs you in once if you lose your authenticator. They are shown only now: store them somewhere safe.</p>
<ol class="codes" id="recovery-codes">{list}</ol>
<p><a href="/account">Done</a></p>"#
    );
    layout(brand, "Recovery codes", &body)
}

/// A message with a link onwards.
pub fn message(brand: &BrandConfig, title: &str, text: &str, link: Option<(&str, &str)>) -> String {
    let link = link.map_or_else(String::new, |(href, label)| {
        format!("<p><a href=\"{}\">{}</a></p>", esc(href), esc(label))
    });
    let body = format!("<h1>{}</h1><p>{}</p>{link}", esc(title), esc(text));
    layout(brand, title, &body)
}

/// The passkey script: registration on the account page, sign-in on the
/// login and second-step pages. The only script of the login host.
pub const WEBAUTHN_JS: &str = include_str!("webauthn.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        let b = BrandConfig::default();
        let page = login(
            &b,
            "\"><script>",
            "<img src=x onerror=alert(1)>",
            Some("<b>"),
            None,
            true,
        );
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<img src=x"));
        assert!(!page.contains("<b>"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(page.contains("role=\"alert\""));
    }

    #[test]
    fn fields_are_labelled() {
        let b = BrandConfig::default();
        for page in [
            login(&b, "t", "", None, None, true),
            email_sent(&b, "t", 10, None),
            totp(
                &b,
                "t",
                "alice",
                SecondFactors {
                    totp: true,
                    passkey: true,
                },
                None,
            ),
            account(&b, "t", &Account::default(), None, None),
            enrol_totp(&b, "t", "<svg></svg>", "ABC", None),
        ] {
            let inputs = page.matches("<input type=\"text\"").count()
                + page.matches("<input type=\"password\"").count();
            let labels = page.matches("<label for=").count();
            assert_eq!(inputs, labels, "{page}");
        }
    }
}
