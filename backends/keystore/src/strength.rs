//! The strength a new keystore passphrase must have.
//!
//! A stolen keystore file can be attacked offline, at whatever speed the attacker's hardware runs
//! Argon2id, for as long as they like. So a new passphrase must be one that zxcvbn (Dropbox's
//! estimator: dictionaries, common passwords, names, keyboard walks, dates, repeats, l33t) puts
//! at 10^14 guesses or more: beyond its top score (4 of 4, from 10^10 guesses), which is tuned for
//! online and fast-hash attacks. At the production floor (64 MiB, 3 passes: roughly a tenth of a
//! second and 64 MiB per guess on one core) 10^14 guesses are some 300,000 core-years. Four random
//! words or 16 random characters pass; three common words or a short password with substitutions
//! do not.
//!
//! A keystore created with the test KDF (below the production floor, which needs
//! `insecure_test_kdf = true`) is waived: its file says it is a throwaway, and it opens only when
//! the config says `insecure_test_kdf = true` again (see `Keystore::open`).

use sbtc_custody::SecretString;

use crate::kdf::KdfParams;

/// log10 of the guesses zxcvbn must estimate for a new passphrase.
pub(crate) const REQUIRED_GUESSES_LOG10: f64 = 14.0;

/// Words that say nothing secret about this deployment: a passphrase built from them is weaker
/// than its length suggests.
const CONTEXT_WORDS: &[&str] = &[
    "sbtc",
    "signer",
    "hsm",
    "keystore",
    "passphrase",
    "password",
    "stacks",
    "bitcoin",
];

/// Checks a passphrase for a new keystore file with `kdf`. The message never contains the
/// passphrase; it says what is required.
pub(crate) fn check_new_passphrase(
    passphrase: &SecretString,
    kdf: &KdfParams,
) -> Result<(), String> {
    if passphrase.expose().is_empty() {
        return Err("the passphrase is empty".to_owned());
    }
    if !kdf.is_production_strength() {
        return Ok(());
    }
    let estimate = zxcvbn::zxcvbn(passphrase.expose(), CONTEXT_WORDS);
    if estimate.guesses_log10() >= REQUIRED_GUESSES_LOG10 {
        return Ok(());
    }
    let mut advice = Vec::new();
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            advice.push(warning.to_string());
        }
        advice.extend(feedback.suggestions().iter().map(|s| s.to_string()));
    }
    let advice = if advice.is_empty() {
        String::new()
    } else {
        format!(" ({})", advice.join(" "))
    };
    Err(format!(
        "the passphrase is too weak for a keystore file: the zxcvbn estimator puts it at about \
         10^{:.0} guesses{advice}; a new keystore needs 10^{REQUIRED_GUESSES_LOG10:.0} guesses or \
         more, because a copy of the file can be attacked offline: use four or more random words \
         or 16 or more random characters (for example `openssl rand -base64 18`)",
        estimate.guesses_log10().max(0.0).floor(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &str) -> Result<(), String> {
        check_new_passphrase(&SecretString::new(p.to_owned()), &KdfParams::default())
    }

    #[test]
    fn weak_passphrases_are_refused_and_the_message_says_what_is_needed() {
        for weak in [
            "password1",
            "Tr0ub4dor&3",
            "sbtc-signer-keystore",
            "qwertyuiopasdfgh",
            "aaaaaaaaaaaaaaaaaaaaaaaa",
            "123456789012",
            "peer test passphrase",
            "bench passphrase 3",
        ] {
            let e = check(weak).unwrap_err();
            assert!(e.contains("needs 10^14 guesses"), "{weak}: {e}");
            assert!(e.contains("four or more random words"), "{weak}: {e}");
            assert!(!e.contains(weak), "the passphrase leaked: {e}");
        }
        assert_eq!(
            check_new_passphrase(&SecretString::new(String::new()), &KdfParams::default()),
            Err("the passphrase is empty".to_owned())
        );
    }

    #[test]
    fn long_random_or_many_word_passphrases_pass() {
        for strong in [
            "glacier orbit mustard velvet",
            "7f3a9c1e5b2d8f40a6c3e9b1",
            "Kq8#vL2!pZ9@wR4$",
        ] {
            check(strong).unwrap_or_else(|e| panic!("{strong}: {e}"));
        }
    }

    #[test]
    fn the_test_kdf_waives_the_rule() {
        let weak = SecretString::new("peer test passphrase".to_owned());
        check_new_passphrase(&weak, &KdfParams::insecure_for_tests()).unwrap();
        assert!(check_new_passphrase(&weak, &KdfParams::default()).is_err());
        // Empty is refused even for a throwaway.
        assert!(check_new_passphrase(
            &SecretString::new(String::new()),
            &KdfParams::insecure_for_tests()
        )
        .is_err());
    }
}
