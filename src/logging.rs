//! Logging set-up, with a cap that keeps secrets out of the log whatever the operator asks for.
//!
//! The operator's filter comes from `SBTC_LOG`, or from `RUST_LOG` when `SBTC_LOG` is unset or
//! empty, in `tracing_subscriber::EnvFilter` syntax; without either, [`DEFAULT_DIRECTIVES`].
//!
//! Some crates print secret values at their verbose levels: `wsts` 14 logs every private
//! polynomial share a signer sends (`Signer 2 shares {2: {5: Scalar { .. } } }`, TRACE in
//! `wsts::state_machine::signer`). Logs of enough signers rebuild the group key. The targets in
//! [`SECRET_CAPS`] are therefore capped by a global filter layer ([`secret_cap`]) that sits under
//! every output layer: an event above a target's cap is dropped before any layer sees it, so no
//! directive, however specific (`SBTC_LOG=wsts::state_machine::signer=trace`), brings it back.
//! [`subscriber`] builds the one subscriber the binary uses; tests build it the same way.

use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::{
    filter::{EnvFilter, ParseError, Targets},
    layer::{Layered, SubscriberExt},
    util::SubscriberInitExt,
    Layer, Registry,
};

/// The variable read first for the log filter.
pub const SBTC_LOG: &str = "SBTC_LOG";
/// Read when [`SBTC_LOG`] is unset or empty.
pub const RUST_LOG: &str = "RUST_LOG";
/// The filter when neither variable is set. cryptoki logs an ERROR for every vendor mechanism it
/// has no name for: noise.
pub const DEFAULT_DIRECTIVES: &str = "warn,cryptoki::mechanism=off";
/// What the devnet gives its signer processes when neither variable is set.
pub const DEVNET_DIRECTIVES: &str = "info,cryptoki::mechanism=off";

/// A target whose events above `max` are never logged, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretCap {
    /// A target prefix, as in a filter directive (`wsts` covers `wsts::state_machine::signer`).
    pub target: &'static str,
    /// The most verbose level that is still logged.
    pub max: LevelFilter,
    pub why: &'static str,
}

/// The capped targets. Read from the sources of wsts 14.0 and p256k1 7.2 (the versions in
/// Cargo.lock): wsts' only secret-printing event is `trace!("Signer {} shares {:?}", ..)` in
/// `wsts::state_machine::signer`; its DEBUG events print states, ids, and the public signature,
/// its INFO ones public keys and nonces. The whole crate stops at INFO all the same: its state
/// machines hold polynomials, shares and nonces, and DEBUG/TRACE is where a patch release would
/// add a dump of them. p256k1 logs nothing today, but the derived `Debug` of its `Scalar` prints
/// the raw limbs, so any future debug event of it would print a secret.
pub const SECRET_CAPS: &[SecretCap] = &[
    SecretCap {
        target: "wsts",
        max: LevelFilter::INFO,
        why: "wsts prints each DKG private share at TRACE (wsts::state_machine::signer); its \
              state machines hold private polynomials, shares and nonces",
    },
    SecretCap {
        target: "p256k1",
        max: LevelFilter::INFO,
        why: "p256k1 scalars print their raw value in Debug form",
    },
];

/// The cap as a filter: everything passes except events of a capped target above its cap.
/// [`subscriber`] installs it as a global filter layer.
pub fn secret_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(SECRET_CAPS.iter().map(|c| (c.target, c.max)))
}

/// The operator's filter from `directives` (`EnvFilter` syntax), for the output layer.
pub fn user_filter(directives: &str) -> Result<EnvFilter, ParseError> {
    EnvFilter::try_new(directives)
}

/// The subscriber the binary installs: the secret cap as a global filter (so it covers every
/// layer), then `output` filtered by `directives`.
pub fn subscriber<L>(
    directives: &str,
    output: L,
) -> Result<impl tracing::Subscriber + Send + Sync + 'static, ParseError>
where
    L: Layer<Layered<Targets, Registry>> + Send + Sync + 'static,
{
    let filter = user_filter(directives)?;
    Ok(Registry::default()
        .with(secret_cap())
        .with(output.with_filter(filter)))
}

/// The caps that `directives` ask to exceed: a bare level above a cap, or a directive for the
/// capped target (or a part or a parent of it) above the cap. For directives `Targets` cannot
/// read (span or field filters) it falls back to the most verbose level anywhere in them.
pub fn exceeded_caps(directives: &str) -> Vec<&'static SecretCap> {
    let asks = |cap: &SecretCap| -> bool {
        match Targets::from_str(directives) {
            Ok(t) => {
                t.default_level().is_some_and(|l| l > cap.max)
                    || t.iter().any(|(target, level)| {
                        level > cap.max
                            && (cap.target.starts_with(target) || target.starts_with(cap.target))
                    })
            }
            Err(_) => user_filter(directives)
                .ok()
                .and_then(|f| f.max_level_hint())
                .is_some_and(|l| l > cap.max),
        }
    };
    SECRET_CAPS.iter().filter(|c| asks(c)).collect()
}

/// Where the filter came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// `SBTC_LOG`, `RUST_LOG`, or `None` for the default.
    pub source: Option<&'static str>,
    pub directives: String,
}

/// Picks the filter: `SBTC_LOG`, else `RUST_LOG`, else [`DEFAULT_DIRECTIVES`]. An unset or
/// empty variable does not count; one that is not UTF-8 is returned as `Err(name)`.
pub fn choose(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Choice, &'static str> {
    for name in [SBTC_LOG, RUST_LOG] {
        match get(name) {
            None => continue,
            Some(v) if v.is_empty() => continue,
            Some(v) => {
                return match v.into_string() {
                    Ok(directives) => Ok(Choice {
                        source: Some(name),
                        directives,
                    }),
                    Err(_) => Err(name),
                }
            }
        }
    }
    Ok(Choice {
        source: None,
        directives: DEFAULT_DIRECTIVES.into(),
    })
}

/// Installs the logging of the binary: to stderr, filtered as the module says. Warns once if the
/// filter is invalid (the default is used instead) or asks for more than a cap allows. Does
/// nothing if a global subscriber is already set.
pub fn init() {
    let mut notices = Vec::new();
    let choice = match choose(|n| std::env::var_os(n)) {
        Ok(c) => c,
        Err(name) => {
            notices.push(format!(
                "{name} is not valid UTF-8; using the default log filter `{DEFAULT_DIRECTIVES}`"
            ));
            Choice {
                source: None,
                directives: DEFAULT_DIRECTIVES.into(),
            }
        }
    };
    // Colours only on a terminal: a log file (the devnet's) stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    };
    let (choice, installed) = match subscriber(&choice.directives, output()) {
        Ok(s) => (choice, s.try_init()),
        Err(e) => {
            notices.push(format!(
                "{}=`{}` is not a valid log filter ({e}); using the default `{DEFAULT_DIRECTIVES}`. \
                 Write comma-separated `level` or `target=level` directives, e.g. \
                 `info,sbtc_hsm_signer=debug`",
                choice.source.unwrap_or("the filter"),
                choice.directives
            ));
            let fallback = Choice {
                source: None,
                directives: DEFAULT_DIRECTIVES.into(),
            };
            let installed = match subscriber(DEFAULT_DIRECTIVES, output()) {
                Ok(s) => s.try_init(),
                Err(_) => return,
            };
            (fallback, installed)
        }
    };
    if installed.is_err() {
        return;
    }
    let capped = exceeded_caps(&choice.directives);
    if !capped.is_empty() {
        let list: Vec<String> = capped
            .iter()
            .map(|c| format!("{} at {} ({})", c.target, c.max, c.why))
            .collect();
        notices.push(format!(
            "{}=`{}` asks for more than is safe to log; capped so that no secret reaches the log: {}",
            choice.source.unwrap_or("the log filter"),
            choice.directives,
            list.join("; ")
        ));
    }
    // A filter that hides our own warnings (`SBTC_LOG=wsts=trace`) must not hide these: they go
    // straight to stderr then. (`tracing::enabled!` cannot tell through a per-layer filter.)
    let shown = Targets::from_str(&choice.directives).map_or(true, |t| {
        t.would_enable(module_path!(), &tracing::Level::WARN)
    });
    for n in notices {
        if shown {
            tracing::warn!("{n}");
        } else {
            eprintln!("warning: {n}");
        }
    }
}

/// Test builds only: a record of the secret values this process made, so a test can look for
/// them in its captured log. Off (records nothing) until [`secret_tap::start`].
#[cfg(any(test, feature = "testing"))]
pub mod secret_tap {
    use std::sync::Mutex;

    use wsts::{
        common::Nonce,
        curve::{point::Point, scalar::Scalar},
        state_machine::signer::Signer,
        v2,
    };

    /// One secret and what it is.
    #[derive(Clone)]
    pub struct Secret {
        pub what: &'static str,
        pub value: Value,
    }

    #[derive(Clone)]
    pub enum Value {
        Scalar(Scalar),
        Point(Point),
    }

    static TAP: Mutex<Option<Vec<Secret>>> = Mutex::new(None);

    fn with(f: impl FnOnce(&mut Vec<Secret>)) {
        let mut guard = TAP.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = guard.as_mut() {
            f(v)
        }
    }

    /// Starts recording (and forgets anything recorded before).
    pub fn start() {
        *TAP.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Stops recording and returns what was recorded.
    pub fn stop() -> Vec<Secret> {
        TAP.lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// A DKG signer at the end of its rounds: its transport key, the private polynomial and the
    /// shares it made from it, the shares it received, its ECDH keys, its key shares and nonce.
    pub(crate) fn dkg_signer(s: &Signer<v2::Party>) {
        with(|v| {
            let mut scalar = |what, x: &Scalar| {
                v.push(Secret {
                    what,
                    value: Value::Scalar(*x),
                })
            };
            scalar("transport key", &s.network_private_key);
            for shares in wsts::traits::Signer::get_shares(&s.signer).values() {
                for x in shares.values() {
                    scalar("private share sent", x);
                }
            }
            for shares in s.decrypted_shares.values() {
                for x in shares.values() {
                    scalar("private share received", x);
                }
            }
            let state = wsts::traits::Signer::save(&s.signer);
            for (_, party) in &state.parties {
                if let Some(poly) = &party.polynomial {
                    for c in poly.data() {
                        scalar("polynomial coefficient", c);
                    }
                }
                for (_, x) in &party.private_keys {
                    scalar("key share", x);
                }
                scalar("party nonce", &party.nonce.d);
                scalar("party nonce", &party.nonce.e);
            }
            for (_, shared) in s.decryption_keys.values() {
                v.push(Secret {
                    what: "ECDH key",
                    value: Value::Point(*shared),
                });
            }
        })
    }

    /// Signing nonces as they are made.
    pub(crate) fn nonces<'a>(nonces: impl IntoIterator<Item = &'a Nonce>) {
        with(|v| {
            for n in nonces {
                for x in [&n.d, &n.e] {
                    v.push(Secret {
                        what: "signing nonce",
                        value: Value::Scalar(*x),
                    });
                }
            }
        })
    }
}
