//! `hexon.toml` text: TOML parsing, `${VAR}` substitution and validation must
//! return typed errors for anything, never panic.
#![no_main]

use hexon_core::config::{Config, substitute};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| (name.len() % 2 == 0).then(|| name.repeat(2));
    let _ = substitute(text, &env);
    if let Ok(config) = Config::parse(text, &env) {
        // What validated must compile, and its dump must parse back the same
        // (a dump of substituted values is not substituted again: skip `$`).
        config.policy().expect("validated routes compile");
        if config.effective_toml().contains('$') {
            return;
        }
        let again = Config::parse(&config.effective_toml(), &env).expect("dump parses");
        assert_eq!(again, config);
    }
});
