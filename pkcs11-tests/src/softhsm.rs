//! SoftHSM2 test fixture: fresh, initialised tokens with known PINs, ready as a
//! [`sbtc_custody_pkcs11::Config`].
//!
//! ```no_run
//! let token = pkcs11_tests::softhsm::token();
//! let backend = sbtc_custody_pkcs11::open(&token.config()).unwrap();
//! ```
//!
//! On first use in a process the fixture creates a private temporary directory with a token
//! directory and a `softhsm2.conf`, points `SOFTHSM2_CONF` at it for the whole process, and creates
//! a pool of tokens with `softhsm2-util`. Each [`SoftHsm::token`] call hands out one unused token.
//!
//! Why a pool made up front: SoftHSM2 reads its token directory once, in `C_Initialize`. Tokens
//! that `softhsm2-util` creates later are invisible to this process, and creating them in-process
//! with `C_InitToken` changes SoftHSM's slot list without a lock, which races with other test
//! threads listing slots. So the fixture must run before any PKCS#11 call in the process; it checks
//! that it did and panics otherwise.
//!
//! Environment:
//! - `PKCS11_MODULE`: run against a vendor module instead of SoftHSM2. Then `PKCS11_TOKEN_LABEL`
//!   (the token to use) and `PKCS11_PIN` (its user PIN) are required, and `PKCS11_TOKEN_SERIAL`
//!   is optional. Every test gets that same token; [`TestToken::key_label`] makes key labels
//!   unique so tests do not collide, and tests should destroy the keys they create.
//! - `SOFTHSM2_MODULE`: path of `libsofthsm2.so` if it is not in a usual place.
//! - `SBTC_SOFTHSM_TOKENS`: how many tokens to create per test process (default 32).
//!
//! SoftHSM2 is not safe against another process writing a token (pkcs11-tool creating a key)
//! while this process reads that token's info: the token then fails with CKR_GENERAL_ERROR in this
//! process until it exits. So [`TestToken::pkcs11_tool`] runs exclusively against
//! [`TestToken::open`], [`TestToken::open_with`] and [`TestToken::slot`], which list every token.
//! In a test binary that runs pkcs11-tool, open backends through those, not `open` directly.
//!
//! Leftover directories of finished test processes (`$TMPDIR/sbtc-softhsm-<pid>-*`) are removed
//! the next time the fixture starts.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, OnceLock, RwLock, RwLockReadGuard,
    },
};

use sbtc_custody::{Error, KeyLabel};
use sbtc_custody_pkcs11::{cryptoki::slot::Slot, load_module, open, Config, Pkcs11Backend};

/// Held shared while this process reads token info, exclusively while pkcs11-tool runs.
static TOKEN_FILES: RwLock<()> = RwLock::new(());

fn reading_tokens() -> RwLockReadGuard<'static, ()> {
    TOKEN_FILES.read().unwrap_or_else(|p| p.into_inner())
}

const SOFTHSM_MODULES: [&str; 4] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

const DEFAULT_POOL: usize = 32;

/// The process-wide fixture: SoftHSM2 with a pool of tokens, or a vendor token.
pub struct SoftHsm {
    module: PathBuf,
    mode: Mode,
}

enum Mode {
    Soft {
        dir: PathBuf,
        conf: PathBuf,
        free: Mutex<Vec<PooledToken>>,
        total: usize,
    },
    Vendor {
        token_label: String,
        token_serial: Option<String>,
        user_pin: String,
    },
}

struct PooledToken {
    label: String,
    user_pin: String,
    so_pin: String,
    pin_file: PathBuf,
}

/// One token for one test.
#[derive(Clone, Debug)]
pub struct TestToken {
    config: Config,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN (a throwaway test PIN on SoftHSM2; `PKCS11_PIN` on a vendor module).
    pub user_pin: String,
    /// The SO PIN (SoftHSM2 only).
    pub so_pin: Option<String>,
    /// True when running against `PKCS11_MODULE` rather than a throwaway SoftHSM2 token.
    pub vendor: bool,
    /// `SOFTHSM2_CONF` for tools run against this token (SoftHSM2 only).
    pub softhsm_conf: Option<PathBuf>,
}

/// The fixture, created on first use (thread-safe; once per process).
pub fn softhsm() -> &'static SoftHsm {
    static FIXTURE: OnceLock<SoftHsm> = OnceLock::new();
    FIXTURE.get_or_init(SoftHsm::create)
}

/// A fresh token from the fixture.
pub fn token() -> TestToken {
    softhsm().token()
}

impl SoftHsm {
    fn create() -> SoftHsm {
        match std::env::var_os("PKCS11_MODULE") {
            Some(module) => Self::vendor(PathBuf::from(module)),
            None => Self::soft(),
        }
    }

    fn vendor(module: PathBuf) -> SoftHsm {
        let required = |var: &str| {
            std::env::var(var).unwrap_or_else(|_| {
                panic!("PKCS11_MODULE is set, so {var} must be set too (see pkcs11_tests::softhsm)")
            })
        };
        SoftHsm {
            module,
            mode: Mode::Vendor {
                token_label: required("PKCS11_TOKEN_LABEL"),
                token_serial: std::env::var("PKCS11_TOKEN_SERIAL").ok(),
                user_pin: required("PKCS11_PIN"),
            },
        }
    }

    fn soft() -> SoftHsm {
        let module = std::env::var_os("SOFTHSM2_MODULE")
            .map(PathBuf::from)
            .or_else(|| {
                SOFTHSM_MODULES
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| {
                panic!(
                    "libsofthsm2.so not found in {SOFTHSM_MODULES:?}; install softhsm2 or set \
                     SOFTHSM2_MODULE"
                )
            });
        let total = std::env::var("SBTC_SOFTHSM_TOKENS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_POOL);

        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("sbtc-softhsm-{}-", std::process::id()))
            .tempdir()
            .expect("create the SoftHSM2 fixture directory")
            .keep();
        let tokens = dir.join("tokens");
        let pins = dir.join("pins");
        std::fs::create_dir(&tokens).expect("create the token directory");
        std::fs::create_dir(&pins).expect("create the PIN directory");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
                 slots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        // SoftHSM reads SOFTHSM2_CONF in C_Initialize, which has not happened yet (checked below).
        std::env::set_var("SOFTHSM2_CONF", &conf);

        let mut free = Vec::with_capacity(total);
        for i in 0..total {
            let label = format!("sbtc-test-{i:03}");
            let user_pin = format!("user-pin-{i:03}");
            let so_pin = format!("so-pin-{i:03}");
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", &label])
                .args(["--pin", &user_pin, "--so-pin", &so_pin])
                .output()
                .expect("run softhsm2-util (install softhsm2)");
            assert!(
                out.status.success(),
                "softhsm2-util --init-token failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let pin_file = pins.join(format!("{label}.pin"));
            write_private(&pin_file, &user_pin);
            free.push(PooledToken {
                label,
                user_pin,
                so_pin,
                pin_file,
            });
        }
        free.reverse();

        let fixture = SoftHsm {
            module,
            mode: Mode::Soft {
                dir,
                conf,
                free: Mutex::new(free),
                total,
            },
        };
        fixture.check_tokens_visible();
        fixture
    }

    /// Panics if SoftHSM2 was initialised in this process before the fixture made its tokens.
    fn check_tokens_visible(&self) {
        let Mode::Soft { free, .. } = &self.mode else {
            return;
        };
        let Some(last) = free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|t| t.label.clone())
        else {
            return;
        };
        let ctx = load_module(&self.module).expect("load SoftHSM2");
        let visible = ctx
            .get_slots_with_token()
            .expect("C_GetSlotList")
            .into_iter()
            .filter_map(|s| ctx.get_token_info(s).ok())
            .any(|info| info.label() == last);
        assert!(
            visible,
            "SoftHSM2 was initialised in this process before the fixture created its tokens; call \
             pkcs11_tests::softhsm::softhsm() before any other PKCS#11 use"
        );
    }

    /// A token no other test in this process uses (SoftHSM2), or the vendor token.
    pub fn token(&self) -> TestToken {
        match &self.mode {
            Mode::Soft {
                conf, free, total, ..
            } => {
                let t = free
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop()
                    .unwrap_or_else(|| {
                        panic!(
                            "all {total} SoftHSM2 tokens of this test process are taken; raise \
                             SBTC_SOFTHSM_TOKENS"
                        )
                    });
                let mut config = Config::new(&self.module);
                config.token_label = Some(t.label.clone());
                config.pin_file = Some(t.pin_file);
                TestToken {
                    config,
                    module: self.module.clone(),
                    token_label: t.label,
                    user_pin: t.user_pin,
                    so_pin: Some(t.so_pin),
                    vendor: false,
                    softhsm_conf: Some(conf.clone()),
                }
            }
            Mode::Vendor {
                token_label,
                token_serial,
                user_pin,
            } => {
                let mut config = Config::new(&self.module);
                config.token_label = Some(token_label.clone());
                config.token_serial = token_serial.clone();
                config.pin_env = Some("PKCS11_PIN".to_owned());
                TestToken {
                    config,
                    module: self.module.clone(),
                    token_label: token_label.clone(),
                    user_pin: user_pin.clone(),
                    so_pin: None,
                    vendor: true,
                    softhsm_conf: None,
                }
            }
        }
    }

    /// The PKCS#11 module under test.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// True when running against `PKCS11_MODULE`.
    pub fn is_vendor(&self) -> bool {
        matches!(self.mode, Mode::Vendor { .. })
    }

    /// The fixture's private directory (SoftHSM2 only): scratch space for test files.
    pub fn dir(&self) -> Option<&Path> {
        match &self.mode {
            Mode::Soft { dir, .. } => Some(dir),
            Mode::Vendor { .. } => None,
        }
    }
}

impl TestToken {
    /// A ready config: module, token label, PIN file (SoftHSM2) or `pin_env = "PKCS11_PIN"`.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// Opens the backend on this token; panics with the error if it fails.
    pub fn open(&self) -> Pkcs11Backend {
        self.open_with(&self.config)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.token_label))
    }

    /// Opens a backend with `config` (a variant of [`TestToken::config`]), never while pkcs11-tool
    /// is writing a token.
    pub fn open_with(&self, config: &Config) -> Result<Pkcs11Backend, Error> {
        let _reading = reading_tokens();
        open(config)
    }

    /// A key label for this test: `stem` itself on a fresh SoftHSM2 token, made unique (process
    /// id and a counter appended) on a shared vendor token. Keep `stem` under 24 characters.
    pub fn key_label(&self, stem: &str) -> KeyLabel {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let label = if self.vendor {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            format!("{stem}-{:x}-{n}", std::process::id())
        } else {
            stem.to_owned()
        };
        KeyLabel::new(&label).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The slot the token is in, through the shared module context.
    pub fn slot(&self) -> Slot {
        let _reading = reading_tokens();
        let ctx = load_module(&self.module).unwrap_or_else(|e| panic!("{e}"));
        ctx.get_slots_with_token()
            .expect("C_GetSlotList")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label() == self.token_label)
            })
            .unwrap_or_else(|| panic!("token '{}' not found", self.token_label))
    }

    /// Runs `pkcs11-tool --module <module> --token-label <label> <args>` (no login).
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.token_label])
            .args(args);
        if let Some(conf) = &self.softhsm_conf {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        let _writing = TOKEN_FILES.write().unwrap_or_else(|p| p.into_inner());
        cmd.output().expect("run pkcs11-tool (install opensc)")
    }

    /// Runs pkcs11-tool logged in as the user; panics with its output unless it succeeds.
    pub fn pkcs11_tool_login(&self, args: &[&str]) -> String {
        let mut full = vec!["--login", "--pin", self.user_pin.as_str()];
        full.extend_from_slice(args);
        let out = self.pkcs11_tool(&full);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pkcs11-tool {args:?} failed:\n{text}");
        text
    }
}

fn write_private(path: &Path, contents: &str) {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Removes `sbtc-softhsm-<pid>-*` directories whose process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("sbtc-softhsm-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
