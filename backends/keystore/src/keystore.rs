//! The keystore backend: one file, unlocked once with the passphrase. Each private key is
//! decrypted only for the one operation that needs it and wiped right after.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError, RwLock,
    },
    time::Duration,
};

use async_trait::async_trait;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use rand::{rngs::OsRng, RngCore};
use sbtc_custody::{
    check_private, BackendInfo, BackendKind, BlockingPool, Capabilities, Custody, Error, ErrorKind,
    Health, KeyInfo, KeyKind, KeyLabel, Operation, P256Signature, PublicKey, RecoverableSignature,
    Result, SealedBlob, SecretBytes, SecretSource, SecretString,
};
use secp256k1::{Message, SecretKey, SECP256K1};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    config::{Config, OpenOptions},
    crypto::{self, SECRET_LEN},
    file::{self, Fingerprint, LockError, ReadError, WriteLock},
    format::{self, Document, Entry, ParseError, FORMAT_VERSION, ID_LEN, MAC_LEN, SALT_LEN},
    kdf::{self, FileKeys, KdfError, KdfParams},
    seal::{self, UnsealError},
    state::{self, Mark},
    strength,
};

const BACKEND: BackendKind = BackendKind::Keystore;
/// How long a writer waits for another process's write to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long an operation waits for a free blocking thread.
const POOL_WAIT: Duration = Duration::from_secs(30);

fn err(op: Operation, kind: ErrorKind) -> Error {
    Error::new(BACKEND, op, kind)
}

/// An encrypted keystore file (see the crate docs for the format and the guarantees).
///
/// Cheap to share: clone an `Arc<Keystore>` or use it as `Arc<dyn Custody>`.
pub struct Keystore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    /// The rollback mark file.
    state_path: PathBuf,
    /// The highest generation this handle has read or written: a file older than this is a
    /// rollback even if the mark file was removed meanwhile.
    seen: AtomicU64,
    keys: FileKeys,
    loaded: RwLock<Loaded>,
    /// Serialises writers in this process; the flock on `lock_path` serialises processes.
    writer: Mutex<()>,
    pool: BlockingPool,
    /// Times the file was read and verified again because it changed on disk.
    reloads: std::sync::atomic::AtomicU64,
}

/// The file as last read or written, and which version of it that was.
#[derive(Clone)]
struct Loaded {
    doc: Arc<Document>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loaded = self.inner.loaded();
        f.debug_struct("Keystore")
            .field("path", &self.inner.path)
            .field("serial", &loaded.doc.id_hex())
            .field("generation", &loaded.doc.generation)
            .field("keys", &loaded.doc.entries.len())
            .finish_non_exhaustive()
    }
}

fn default_pool() -> BlockingPool {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    BlockingPool::new(cpus.clamp(2, 8), POOL_WAIT)
}

impl Keystore {
    /// Opens the keystore named by `[custody.keystore]`, reading the passphrase from its source.
    /// Never creates a keystore: a missing file is an error, so a typo in `path` cannot start an
    /// empty keystore. A file made with test-strength KDF settings opens only with
    /// `insecure_test_kdf = true`; a file older than the rollback mark does not open.
    pub async fn open(config: &Config) -> Result<Keystore> {
        let source = config.passphrase_source()?;
        let pool = default_pool();
        let passphrase = load_passphrase(&pool, source, "keystore passphrase").await?;
        Self::open_in(pool, config.path.clone(), passphrase, config.open_options()).await
    }

    /// Creates a new, empty keystore at `config.path` with the configured KDF settings. Refuses
    /// to overwrite an existing file. With `passphrase_prompt`, asks twice.
    pub async fn create(config: &Config) -> Result<Keystore> {
        let source = config.passphrase_source()?;
        let kdf = config.kdf_params()?;
        let pool = default_pool();
        let passphrase = load_passphrase(&pool, source.clone(), "new keystore passphrase").await?;
        if source == SecretSource::Prompt {
            let again = load_passphrase(&pool, source, "repeat the passphrase").await?;
            if again.expose() != passphrase.expose() {
                return Err(err(Operation::Open, ErrorKind::Config)
                    .detail("the two passphrases differ")
                    .hint("run the command again and type the same passphrase twice"));
            }
        }
        let state_path = config.state_path.clone();
        Self::create_in(pool, config.path.clone(), passphrase, kdf, state_path).await
    }

    /// Opens `path` with an explicit passphrase (tools, tests) and the production rules: a file
    /// with test-strength KDF settings is refused. The rollback mark is `<path>.state`.
    pub async fn open_with_passphrase(
        path: impl AsRef<Path>,
        passphrase: &SecretString,
    ) -> Result<Keystore> {
        Self::open_with_options(path, passphrase, &OpenOptions::default()).await
    }

    /// Opens `path` with an explicit passphrase and explicit options (for example
    /// [`OpenOptions::insecure_test`] for a throwaway test keystore).
    pub async fn open_with_options(
        path: impl AsRef<Path>,
        passphrase: &SecretString,
        options: &OpenOptions,
    ) -> Result<Keystore> {
        Self::open_in(
            default_pool(),
            path.as_ref().to_path_buf(),
            passphrase.clone(),
            options.clone(),
        )
        .await
    }

    /// Creates an empty keystore at `path` with an explicit passphrase and KDF settings; the
    /// rollback mark is `<path>.state`. With production settings the passphrase must pass the
    /// strength rule; with test settings only a non-empty one is needed, and the file then opens
    /// only with [`OpenOptions::insecure_test`].
    pub async fn create_with_passphrase(
        path: impl AsRef<Path>,
        passphrase: &SecretString,
        kdf: KdfParams,
    ) -> Result<Keystore> {
        Self::create_in(
            default_pool(),
            path.as_ref().to_path_buf(),
            passphrase.clone(),
            kdf,
            None,
        )
        .await
    }

    /// The keystore file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The Argon2id settings the file records.
    pub fn kdf_params(&self) -> KdfParams {
        self.inner.loaded().doc.kdf
    }

    /// The file's generation: 1 when created, one more for every key generated or destroyed.
    pub fn generation(&self) -> u64 {
        self.inner.loaded().doc.generation
    }

    /// The rollback mark file this handle keeps up to date.
    pub fn state_path(&self) -> &Path {
        &self.inner.state_path
    }

    async fn open_in(
        pool: BlockingPool,
        path: PathBuf,
        passphrase: SecretString,
        options: OpenOptions,
    ) -> Result<Self> {
        let task_pool = pool.clone();
        pool.run(BACKEND, Operation::Open, move || {
            let op = Operation::Open;
            // Rewrites replace the file by rename: through a symlink they would replace the link,
            // so work on the real path. (A missing file is reported by read_document.)
            let path = fs::canonicalize(&path).unwrap_or(path);
            let (doc, fingerprint) = read_document(&path, op)?;
            // Before Argon2 runs: the settings are the file's own claim, and a changed claim
            // fails the passphrase check or the MAC below anyway.
            if !doc.kdf.is_production_strength() && !options.insecure_test_kdf {
                return Err(test_kdf_refused(&path, &doc.kdf, op));
            }
            let keys = derive_keys(&passphrase, &doc, &path, op)?;
            drop(passphrase);
            verify(&keys, &doc, &path, op)?;
            let state_path = options
                .state_path
                .clone()
                .unwrap_or_else(|| state::default_path(&path));
            let keystore = Keystore::assemble(path, keys, doc, fingerprint, task_pool, state_path);
            keystore.inner.settle_mark(op)?;
            let doc = keystore.inner.loaded().doc;
            let path = &keystore.inner.path;
            if !doc.kdf.is_production_strength() {
                tracing::warn!(
                    path = %path.display(),
                    memory_kib = doc.kdf.memory_kib(),
                    iterations = doc.kdf.iterations(),
                    "keystore was created with test-strength Argon2id settings; do not keep real \
                     keys in it"
                );
            }
            tracing::info!(
                path = %path.display(),
                keys = doc.entries.len(),
                generation = doc.generation,
                "keystore opened"
            );
            Ok(keystore)
        })
        .await
    }

    async fn create_in(
        pool: BlockingPool,
        path: PathBuf,
        passphrase: SecretString,
        kdf: KdfParams,
        state_path: Option<PathBuf>,
    ) -> Result<Self> {
        let task_pool = pool.clone();
        pool.run(BACKEND, Operation::Open, move || {
            let op = Operation::Open;
            strength::check_new_passphrase(&passphrase, &kdf).map_err(|detail| {
                err(op, ErrorKind::Config).detail(detail).hint(
                    "choose a stronger passphrase for the new keystore and put it where the \
                     config's passphrase source points",
                )
            })?;
            file::ensure_dir(&path).map_err(|e| {
                err(op, ErrorKind::Io).detail(format!(
                    "cannot create the directory for {}: {e}",
                    path.display()
                ))
            })?;
            let _lock = take_lock(&file::lock_path(&path), op)?;
            match fs::symlink_metadata(&path) {
                Ok(_) => {
                    return Err(err(op, ErrorKind::KeyExists)
                        .detail(format!("{} exists already", path.display()))
                        .hint(
                            "open the existing keystore instead (it may hold keys), or move it \
                             away first to start a new one",
                        ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(err(op, ErrorKind::Io)
                        .detail(format!("cannot check {}: {e}", path.display())))
                }
            }
            let mut doc = Document {
                version: FORMAT_VERSION,
                id: random_array::<ID_LEN>(),
                generation: 1,
                kdf,
                salt: random_array::<SALT_LEN>(),
                check_nonce: [0; crypto::NONCE_LEN],
                check_ciphertext: Vec::new(),
                entries: Vec::new(),
                mac: [0; MAC_LEN],
            };
            let keys = derive_keys(&passphrase, &doc, &path, op)?;
            drop(passphrase);
            crypto::make_check(&keys, &mut doc)
                .map_err(|()| internal(op, "cannot encrypt the passphrase check value"))?;
            // The mark first: if it cannot be written, no keystore exists yet. A mark left by a
            // keystore that was moved away is replaced, deliberately: this is a new keystore.
            let state_path = state_path.unwrap_or_else(|| state::default_path(&path));
            write_mark(
                &state_path,
                &Mark {
                    keystore_id: doc.id,
                    generation: doc.generation,
                },
                op,
            )?;
            let fingerprint = write_document(&path, &keys, &mut doc, op)?;
            tracing::info!(path = %path.display(), "keystore created");
            Ok(Keystore::assemble(
                path,
                keys,
                doc,
                fingerprint,
                task_pool,
                state_path,
            ))
        })
        .await
    }

    fn assemble(
        path: PathBuf,
        keys: FileKeys,
        doc: Document,
        fingerprint: Fingerprint,
        pool: BlockingPool,
        state_path: PathBuf,
    ) -> Keystore {
        Keystore {
            inner: Arc::new(Inner {
                lock_path: file::lock_path(&path),
                path,
                state_path,
                seen: AtomicU64::new(doc.generation),
                keys,
                loaded: RwLock::new(Loaded {
                    doc: Arc::new(doc),
                    fingerprint,
                }),
                writer: Mutex::new(()),
                pool,
                reloads: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// How many times this handle re-read and re-verified the file because another writer changed
    /// it. An unchanged file costs one `stat` per operation and is never read again.
    pub fn reloads(&self) -> u64 {
        self.inner
            .reloads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current file contents. A stat per call notices a rewrite by another process (or a
    /// chmod), and then the file is read and verified again before it is used.
    async fn current(&self, op: Operation) -> Result<Arc<Document>> {
        let cached = self.inner.loaded();
        match Fingerprint::of_path(&self.inner.path) {
            Ok(now) if now == cached.fingerprint => return Ok(cached.doc),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(err(op, ErrorKind::Io)
                    .detail(format!(
                        "the keystore file {} is gone",
                        self.inner.path.display()
                    ))
                    .hint("restore the keystore file from backup"))
            }
            Err(e) => {
                return Err(err(op, ErrorKind::Io)
                    .detail(format!("cannot stat {}: {e}", self.inner.path.display())))
            }
        }
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(BACKEND, op, move || inner.reload(op))
            .await
    }

    /// The entry under `label`, which must be of `want` kind.
    async fn entry(
        &self,
        op: Operation,
        label: &KeyLabel,
        want: KeyKind,
    ) -> Result<(Arc<Document>, usize)> {
        let doc = self.current(op).await.map_err(|e| with_label(e, label))?;
        let index = find(&doc, label, op, &self.inner.path)?;
        let have = doc.entries[index].kind;
        if have != want {
            return Err(err(op, ErrorKind::WrongKeyKind)
                .label(label)
                .detail(format!(
                    "'{label}' is a {have} key; {op} needs a {want} key"
                )));
        }
        Ok((doc, index))
    }

    fn decrypt(
        &self,
        op: Operation,
        doc: &Document,
        entry: &Entry,
    ) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
        crypto::open_entry(&self.inner.keys, &doc.id, entry).map_err(|()| {
            err(op, ErrorKind::Tampered)
                .label(&entry.label)
                .detail(format!(
                    "the encrypted key '{}' in {} does not authenticate",
                    entry.label,
                    self.inner.path.display()
                ))
                .hint("restore the keystore file from backup")
        })
    }
}

impl Inner {
    fn loaded(&self) -> Loaded {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, doc: Document, fingerprint: Fingerprint) -> Arc<Document> {
        let doc = Arc::new(doc);
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Loaded {
            doc: doc.clone(),
            fingerprint,
        };
        doc
    }

    /// Reads and verifies the file with the keys derived at open (no Argon2 run), and checks it
    /// against the rollback mark. The caller holds the write lock, so the keystore and its mark
    /// are read in a consistent state. Returns the mark as found (None if there is none).
    fn read_verified(&self, op: Operation) -> Result<(Document, Fingerprint, Option<Mark>)> {
        let (doc, fingerprint) = read_document(&self.path, op)?;
        // A different salt or KDF means another keystore was put in this one's place.
        let loaded = self.loaded();
        if doc.salt != loaded.doc.salt || doc.kdf != loaded.doc.kdf {
            return Err(err(op, ErrorKind::AuthFailed)
                .detail(format!(
                    "{} was replaced by a keystore that this signer's passphrase did not unlock",
                    self.path.display()
                ))
                .hint("restart the signer to open the new file, or restore the old one"));
        }
        verify(&self.keys, &doc, &self.path, op)?;
        let mark = self.check_mark(&doc, op)?;
        self.seen.fetch_max(doc.generation, Ordering::AcqRel);
        Ok((doc, fingerprint, mark))
    }

    /// Refuses a file older than the mark, or older than what this handle has seen.
    fn check_mark(&self, doc: &Document, op: Operation) -> Result<Option<Mark>> {
        let mark = state::read(&self.state_path).map_err(|detail| {
            err(op, ErrorKind::Corrupt)
                .detail(format!(
                    "the keystore's rollback mark cannot be used: {detail}"
                ))
                .hint(format!(
                    "restore {} from backup along with the keystore; if the keystore at {} is \
                     surely the newest copy, remove the mark file and open again (a new mark is \
                     started from the keystore)",
                    self.state_path.display(),
                    self.path.display()
                ))
        })?;
        if let Some(m) = &mark {
            if m.keystore_id != doc.id {
                return Err(err(op, ErrorKind::RolledBack)
                    .detail(format!(
                        "{} is keystore {}, but the rollback mark {} belongs to keystore {}: \
                         another keystore file was put in place of the one this host used",
                        self.path.display(),
                        doc.id_hex(),
                        self.state_path.display(),
                        hex::encode(m.keystore_id)
                    ))
                    .hint(format!(
                        "put the keystore this host used back at {}; to use this one \
                         deliberately instead, remove {} and open again",
                        self.path.display(),
                        self.state_path.display()
                    )));
            }
        }
        let seen = self.seen.load(Ordering::Acquire);
        let high = mark.map_or(seen, |m| m.generation.max(seen));
        if doc.generation < high {
            return Err(rolled_back(
                &self.path,
                &self.state_path,
                doc.generation,
                high,
                op,
            ));
        }
        Ok(mark)
    }

    /// At open: under the write lock, reads the file again and checks it against the mark, then
    /// starts the mark (none yet) or moves it up (a crash between a write and its mark).
    fn settle_mark(&self, op: Operation) -> Result<()> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let _lock = take_lock(&self.lock_path, op)?;
        let (doc, fingerprint, mark) = self.read_verified(op)?;
        let current = Mark {
            keystore_id: doc.id,
            generation: doc.generation,
        };
        match mark {
            Some(m) if m.generation >= doc.generation => {}
            Some(_) => write_mark(&self.state_path, &current, op)?,
            None => {
                tracing::warn!(
                    path = %self.path.display(),
                    state = %self.state_path.display(),
                    generation = doc.generation,
                    "the keystore has no rollback mark yet; starting one at its generation"
                );
                write_mark(&self.state_path, &current, op)?;
            }
        }
        self.store(doc, fingerprint);
        Ok(())
    }

    fn reload(&self, op: Operation) -> Result<Arc<Document>> {
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Under the lock, so that a write (file, then mark) is never seen half done.
        let _lock = take_lock(&self.lock_path, op)?;
        let (doc, fingerprint, _) = self.read_verified(op)?;
        Ok(self.store(doc, fingerprint))
    }

    /// Read, change and atomically rewrite the file, holding both the in-process mutex and the
    /// cross-process lock, so no write is lost to a concurrent one.
    fn modify<T>(
        &self,
        op: Operation,
        change: impl FnOnce(&mut Document) -> Result<T>,
    ) -> Result<T> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let _lock = take_lock(&self.lock_path, op)?;
        let (mut doc, _, _) = self.read_verified(op)?;
        let out = change(&mut doc)?;
        doc.version = FORMAT_VERSION;
        doc.generation += 1;
        let fingerprint = write_document(&self.path, &self.keys, &mut doc, op)?;
        self.seen.fetch_max(doc.generation, Ordering::AcqRel);
        // The file first, then the mark: a crash between leaves the mark behind the file, which
        // the next open moves up; the other order would refuse the file that was really written.
        let mark = Mark {
            keystore_id: doc.id,
            generation: doc.generation,
        };
        if let Err(e) = write_mark(&self.state_path, &mark, op) {
            // The change is on disk and must be reported as done; the next open retries the mark.
            tracing::error!(
                state = %self.state_path.display(),
                "the keystore was written but its rollback mark was not: {e}"
            );
        }
        self.store(doc, fingerprint);
        Ok(out)
    }
}

async fn load_passphrase(
    pool: &BlockingPool,
    source: SecretSource,
    what: &'static str,
) -> Result<SecretString> {
    // A file, a credential or a terminal prompt: all blocking.
    pool.run(BACKEND, Operation::Login, move || {
        source.load(BACKEND, what)
    })
    .await
}

fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng.fill_bytes(&mut out);
    out
}

fn write_mark(path: &Path, mark: &Mark, op: Operation) -> Result<()> {
    state::write(path, mark).map_err(|e| {
        err(op, ErrorKind::Io)
            .detail(format!(
                "cannot write the keystore's rollback mark {}: {e}",
                path.display()
            ))
            .hint(
                "make that directory writable by the signer, or set state_path in \
                 [custody.keystore] to a writable place",
            )
    })
}

fn rolled_back(path: &Path, state_path: &Path, generation: u64, mark: u64, op: Operation) -> Error {
    err(op, ErrorKind::RolledBack)
        .detail(format!(
            "{} is generation {generation} of the keystore, but this host has already used \
             generation {mark} (the rollback mark is {}): an older copy of the file was put back, \
             so keys generated since are missing from it and keys destroyed since are back",
            path.display(),
            state_path.display()
        ))
        .hint(format!(
            "put the newest copy of the keystore back at {}. To go on with this older copy \
             deliberately (keys generated after it are lost to this signer, keys destroyed after \
             it are usable again), remove {} and start again: the mark restarts at generation \
             {generation}",
            path.display(),
            state_path.display()
        ))
}

fn test_kdf_refused(path: &Path, kdf: &KdfParams, op: Operation) -> Error {
    err(op, ErrorKind::Config)
        .detail(format!(
            "{} was made with test-strength Argon2id settings ({} KiB, {} passes; the production \
             floor is {} KiB and {} passes), so a copy of it falls to a passphrase search quickly; \
             it opens only when [custody.keystore.kdf] says insecure_test_kdf = true",
            path.display(),
            kdf.memory_kib(),
            kdf.iterations(),
            KdfParams::MIN_MEMORY_KIB,
            KdfParams::MIN_ITERATIONS
        ))
        .hint(
            "for a throwaway test or devnet keystore, set insecure_test_kdf = true under \
             [custody.keystore.kdf]; for real keys, create a new keystore with production \
             settings (`keys init` without insecure_test_kdf) and generate new keys in it",
        )
}

/// Names the key an operation was about, unless the error already names one.
fn with_label(e: Error, label: &KeyLabel) -> Error {
    if e.key_label().is_some() {
        e
    } else {
        e.label(label)
    }
}

fn internal(op: Operation, detail: impl Into<String>) -> Error {
    err(op, ErrorKind::Internal).detail(detail)
}

fn take_lock(lock_path: &Path, op: Operation) -> Result<WriteLock> {
    WriteLock::acquire(lock_path, LOCK_WAIT).map_err(|e| match e {
        LockError::Io(e) => {
            err(op, ErrorKind::Io).detail(format!("cannot lock {}: {e}", lock_path.display()))
        }
        LockError::Timeout(wait) => err(op, ErrorKind::Busy)
            .detail(format!(
                "another process held the lock {} for {wait:?}",
                lock_path.display()
            ))
            .hint("wait for the other sbtc-hsm-signer command to finish, then retry"),
    })
}

fn find(doc: &Document, label: &KeyLabel, op: Operation, path: &Path) -> Result<usize> {
    doc.entries
        .iter()
        .position(|e| &e.label == label)
        .ok_or_else(|| {
            err(op, ErrorKind::KeyNotFound)
                .label(label)
                .detail(format!("no key '{label}' in {}", path.display()))
        })
}

/// Stat, permission check, bounded read and parse. Never writes.
fn read_document(path: &Path, op: Operation) -> Result<(Document, Fingerprint)> {
    if let Err(e) = fs::metadata(path) {
        return Err(if e.kind() == io::ErrorKind::NotFound {
            err(op, ErrorKind::Config)
                .detail(format!("there is no keystore file at {}", path.display()))
                .hint(
                    "check `path` in [custody.keystore]; opening never creates a keystore: \
                     create it with `sbtc-hsm-signer keys init`",
                )
        } else {
            err(op, ErrorKind::Io).detail(format!("cannot stat {}: {e}", path.display()))
        });
    }
    check_private(path).map_err(|msg| {
        err(op, ErrorKind::SecretUnavailable)
            .detail(format!("the keystore file {msg}"))
            .hint(format!(
                "run `chmod 600 {}`; while others could read it, they may have copied the \
                 encrypted keys (the passphrase still protects them)",
                path.display()
            ))
    })?;
    let (bytes, fingerprint) = file::read_bounded(path).map_err(|e| match e {
        ReadError::Io(e) => {
            err(op, ErrorKind::Io).detail(format!("cannot read {}: {e}", path.display()))
        }
        ReadError::NotAFile => err(op, ErrorKind::Config)
            .detail(format!("{} is not a regular file", path.display()))
            .hint("point `path` in [custody.keystore] at the keystore file"),
        ReadError::TooLarge(n) => err(op, ErrorKind::Corrupt).detail(format!(
            "{} has {n} bytes, far more than any keystore: not a keystore file",
            path.display()
        )),
    })?;
    let doc = format::parse(&bytes).map_err(|e| match e {
        ParseError::Truncated(m) => {
            err(op, ErrorKind::Truncated).detail(format!("{} is cut off: {m}", path.display()))
        }
        ParseError::Corrupt(m) => {
            err(op, ErrorKind::Corrupt).detail(format!("{}: {m}", path.display()))
        }
        ParseError::Newer(v) => err(op, ErrorKind::Corrupt)
            .detail(format!(
                "{} is keystore format version {v}, written by a newer sbtc-hsm-signer (this one \
                 reads version {FORMAT_VERSION})",
                path.display()
            ))
            .hint("upgrade sbtc-hsm-signer to the release that wrote this file"),
    })?;
    Ok((doc, fingerprint))
}

fn derive_keys(
    passphrase: &SecretString,
    doc: &Document,
    path: &Path,
    op: Operation,
) -> Result<FileKeys> {
    kdf::derive(passphrase, &doc.salt, doc.kdf).map_err(|e| match e {
        KdfError::Params(m) => {
            err(op, ErrorKind::Corrupt).detail(format!("{}: {m}", path.display()))
        }
        KdfError::OutOfMemory(kib) => err(op, ErrorKind::Io)
            .detail(format!(
                "cannot allocate the {} MiB that Argon2id needs for {}",
                kib / 1024,
                path.display()
            ))
            .hint("free memory or raise the service's memory limit"),
        KdfError::Internal(m) => internal(op, m),
    })
}

/// Passphrase check, then the file MAC, then every entry: so a wrong passphrase is AuthFailed
/// and only a file that the right passphrase opens can be called Tampered.
fn verify(keys: &FileKeys, doc: &Document, path: &Path, op: Operation) -> Result<()> {
    if !crypto::passphrase_matches(keys, doc) {
        return Err(err(op, ErrorKind::AuthFailed)
            .detail(format!("the passphrase does not unlock {}", path.display()))
            .hint(
                "check the passphrase source in [custody.keystore]; if the passphrase is surely \
                 right, the file's header (salt, KDF settings or check value) was changed: \
                 restore the file from backup",
            ));
    }
    let tampered = |detail: String| {
        err(op, ErrorKind::Tampered)
            .detail(format!("{}: {detail}", path.display()))
            .hint("restore the keystore file from backup; do not use this copy")
    };
    if !crypto::mac_matches(keys, doc) {
        return Err(tampered(
            "the file MAC does not verify: keys were added, removed, reordered or edited since \
             this signer wrote it"
                .into(),
        ));
    }
    for (i, entry) in doc.entries.iter().enumerate() {
        if doc.entries[..i].iter().any(|e| e.label == entry.label) {
            return Err(tampered(format!(
                "the label '{}' appears twice",
                entry.label
            )));
        }
        // Decrypt once to prove every key opens and matches its public key; wiped at once.
        let secret = crypto::open_entry(keys, &doc.id, entry).map_err(|()| {
            tampered(format!(
                "the encrypted key '{}' does not authenticate",
                entry.label
            ))
        })?;
        if public_key_of(entry.kind, &secret) != entry.public_key {
            return Err(tampered(format!(
                "the private key '{}' does not match its public key",
                entry.label
            )));
        }
    }
    Ok(())
}

/// The public key of a stored secret (None for seal keys and invalid scalars).
fn public_key_of(kind: KeyKind, secret: &[u8; SECRET_LEN]) -> Option<PublicKey> {
    match kind {
        KeyKind::Secp256k1 => {
            let mut sk = SecretKey::from_slice(secret).ok()?;
            let pk = sk.public_key(SECP256K1);
            sk.non_secure_erase();
            Some(PublicKey::Secp256k1(pk))
        }
        KeyKind::P256 => p256::SecretKey::from_slice(secret)
            .ok()
            .map(|sk| PublicKey::P256(sk.public_key())),
        KeyKind::Seal => None,
    }
}

/// A fresh secret of `kind` from the OS RNG, and its public key.
fn new_secret(
    kind: KeyKind,
    op: Operation,
) -> Result<(Zeroizing<[u8; SECRET_LEN]>, Option<PublicKey>)> {
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    match kind {
        KeyKind::Secp256k1 => {
            // A random 32-byte string is a valid scalar except with probability ~2^-128.
            for _ in 0..16 {
                OsRng.fill_bytes(secret.as_mut_slice());
                if let Some(pk) = public_key_of(kind, &secret) {
                    return Ok((secret, Some(pk)));
                }
            }
            Err(internal(
                op,
                "the RNG gave no valid secp256k1 scalar in 16 tries",
            ))
        }
        KeyKind::P256 => {
            let sk = p256::SecretKey::random(&mut OsRng);
            let mut bytes = sk.to_bytes();
            secret.copy_from_slice(&bytes);
            bytes[..].zeroize();
            Ok((secret, Some(PublicKey::P256(sk.public_key()))))
        }
        KeyKind::Seal => {
            OsRng.fill_bytes(secret.as_mut_slice());
            Ok((secret, None))
        }
    }
}

/// MAC, serialise and atomically replace the file; returns the new file's fingerprint.
fn write_document(
    path: &Path,
    keys: &FileKeys,
    doc: &mut Document,
    op: Operation,
) -> Result<Fingerprint> {
    crypto::compute_mac(keys, doc).map_err(|()| internal(op, "cannot compute the file MAC"))?;
    let bytes = doc
        .to_bytes()
        .map_err(|e| internal(op, format!("cannot serialise the keystore: {e}")))?;
    let io_err = |e: io::Error| {
        err(op, ErrorKind::Io).detail(format!("cannot write {}: {e}", path.display()))
    };
    file::write_atomic(path, &bytes).map_err(io_err)?;
    Fingerprint::of_path(path).map_err(io_err)
}

#[async_trait]
impl Custody for Keystore {
    fn backend(&self) -> BackendKind {
        BACKEND
    }

    async fn info(&self) -> Result<BackendInfo> {
        let doc = self.current(Operation::Info).await?;
        Ok(BackendInfo {
            backend: BACKEND,
            manufacturer: "sbtc-hsm-signer".into(),
            model: "encrypted keystore file".into(),
            serial: doc.id_hex(),
            version: format!(
                "format {}, generation {} (Argon2id {} KiB, {} passes, {} lanes)",
                doc.version,
                doc.generation,
                doc.kdf.memory_kib(),
                doc.kdf.iterations(),
                doc.kdf.parallelism()
            ),
            capabilities: Capabilities {
                secp256k1: true,
                p256: true,
                seal: true,
                seal_method: seal::METHOD.into(),
                // The encrypted file is itself the backup: copy it, keep the passphrase.
                key_backup: true,
                max_concurrency: self.inner.pool.size(),
            },
        })
    }

    async fn generate(&self, label: &KeyLabel, kind: KeyKind) -> Result<KeyInfo> {
        let op = Operation::Generate;
        let inner = self.inner.clone();
        let label = label.clone();
        self.inner
            .pool
            .run(BACKEND, op, move || {
                inner
                    .modify(op, |doc| {
                        if let Some(old) = doc.find(&label) {
                            return Err(err(op, ErrorKind::KeyExists).label(&label).detail(
                                format!(
                                    "{} holds a {} key '{label}' already",
                                    inner.path.display(),
                                    old.kind
                                ),
                            ));
                        }
                        let (secret, public_key) = new_secret(kind, op)?;
                        let mut entry = Entry {
                            label: label.clone(),
                            kind,
                            public_key,
                            nonce: [0; crypto::NONCE_LEN],
                            ciphertext: Vec::new(),
                        };
                        crypto::seal_entry(&inner.keys, &doc.id, &mut entry, &secret).map_err(
                            |()| internal(op, "cannot encrypt the new key").label(&label),
                        )?;
                        drop(secret);
                        let info = entry.info();
                        doc.entries.push(entry);
                        tracing::info!(label = %label, kind = %kind, "keystore key generated");
                        Ok(info)
                    })
                    .map_err(|e| with_label(e, &label))
            })
            .await
    }

    async fn public_key(&self, label: &KeyLabel) -> Result<PublicKey> {
        let op = Operation::PublicKey;
        let doc = self.current(op).await.map_err(|e| with_label(e, label))?;
        let entry = &doc.entries[find(&doc, label, op, &self.inner.path)?];
        entry.public_key.ok_or_else(|| {
            err(op, ErrorKind::WrongKeyKind)
                .label(label)
                .detail(format!("'{label}' is a seal key and has no public key"))
        })
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        let doc = self.current(Operation::List).await?;
        Ok(doc.entries.iter().map(Entry::info).collect())
    }

    async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<RecoverableSignature> {
        let op = Operation::SignSecp256k1;
        let (doc, index) = self.entry(op, label, KeyKind::Secp256k1).await?;
        let entry = &doc.entries[index];
        // The entry's AEAD binds the scalar to its label and kind, and open() checked every
        // scalar against its public key, so no recovery round-trip is needed here.
        let secret = self.decrypt(op, &doc, entry)?;
        let mut sk = SecretKey::from_slice(secret.as_slice())
            .map_err(|_| internal(op, "the stored scalar is not a secp256k1 key").label(label))?;
        drop(secret);
        let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(*digest), &sk);
        sk.non_secure_erase();
        // libsecp256k1 signs low-S with a true recovery id; `from_secp256k1` keeps both right.
        Ok(RecoverableSignature::from_secp256k1(&sig))
    }

    async fn sign_p256_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<P256Signature> {
        let op = Operation::SignP256;
        let (doc, index) = self.entry(op, label, KeyKind::P256).await?;
        let entry = &doc.entries[index];
        let secret = self.decrypt(op, &doc, entry)?;
        // SigningKey wipes itself on drop.
        let signing = p256::ecdsa::SigningKey::from_slice(secret.as_slice())
            .map_err(|_| internal(op, "the stored scalar is not a P-256 key").label(label))?;
        drop(secret);
        match entry.public_key {
            Some(PublicKey::P256(public))
                if p256::ecdsa::VerifyingKey::from(&public) == *signing.verifying_key() => {}
            _ => {
                return Err(
                    internal(op, "the private key does not match its public key").label(label),
                )
            }
        }
        let sig: p256::ecdsa::Signature = signing
            .sign_prehash(digest)
            .map_err(|e| internal(op, format!("P-256 signing failed: {e}")).label(label))?;
        P256Signature::from_raw(&sig.to_bytes())
            .map_err(|e| internal(op, e.to_string()).label(label))
    }

    async fn seal(&self, label: &KeyLabel, plaintext: &[u8], aad: &[u8]) -> Result<SealedBlob> {
        let op = Operation::Seal;
        let (doc, index) = self.entry(op, label, KeyKind::Seal).await?;
        let key = self.decrypt(op, &doc, &doc.entries[index])?;
        let blob = seal::seal(&key, label, plaintext, aad)
            .map_err(|()| internal(op, "XChaCha20-Poly1305 refused the input").label(label))?;
        Ok(SealedBlob::from_bytes(blob))
    }

    async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
    ) -> Result<SecretBytes> {
        let op = Operation::Unseal;
        let (doc, index) = self.entry(op, label, KeyKind::Seal).await?;
        let key = self.decrypt(op, &doc, &doc.entries[index])?;
        seal::unseal(&key, label, sealed.as_bytes(), aad)
            .map(SecretBytes::from)
            .map_err(|e| match e {
                UnsealError::TooShort(n) => {
                    err(op, ErrorKind::Corrupt).label(label).detail(format!(
                        "the sealed blob has {n} bytes, fewer than any blob this backend makes"
                    ))
                }
                UnsealError::Auth => err(op, ErrorKind::Tampered)
                    .label(label)
                    .detail("the sealed blob does not authenticate under this key with this AAD"),
            })
    }

    async fn destroy(&self, label: &KeyLabel) -> Result<()> {
        let op = Operation::Destroy;
        let inner = self.inner.clone();
        let label = label.clone();
        self.inner
            .pool
            .run(BACKEND, op, move || {
                inner
                    .modify(op, |doc| {
                        let index = find(doc, &label, op, &inner.path)?;
                        doc.entries.remove(index);
                        tracing::info!(label = %label, "keystore key destroyed");
                        Ok(())
                    })
                    .map_err(|e| with_label(e, &label))
            })
            .await
    }

    async fn health(&self) -> Result<Health> {
        Ok(match self.current(Operation::Health).await {
            Ok(doc) => Health {
                ok: true,
                detail: format!(
                    "keystore {} verified, {} keys",
                    self.inner.path.display(),
                    doc.entries.len()
                ),
            },
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as the release before the generation counter wrote it.
    fn rewrite_as_version_1(path: &Path, passphrase: &SecretString) {
        let (mut doc, _) = read_document(path, Operation::Open).unwrap();
        let keys = kdf::derive(passphrase, &doc.salt, doc.kdf).unwrap();
        doc.version = format::FORMAT_VERSION_1;
        doc.generation = 0;
        write_document(path, &keys, &mut doc, Operation::Open).unwrap();
    }

    #[tokio::test]
    async fn a_version_1_file_opens_and_becomes_version_2_on_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.json");
        let passphrase = SecretString::new("orbit glacier mustard velvet".into());
        let options = OpenOptions::insecure_test();
        let ks =
            Keystore::create_with_passphrase(&path, &passphrase, KdfParams::insecure_for_tests())
                .await
                .unwrap();
        let identity = KeyLabel::new("identity").unwrap();
        let pk = ks
            .generate(&identity, KeyKind::Secp256k1)
            .await
            .unwrap()
            .public_key
            .unwrap();
        drop(ks);
        rewrite_as_version_1(&path, &passphrase);
        fs::remove_file(state::default_path(&path)).unwrap();
        let v1 = fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&v1).contains("generation"));

        let ks = Keystore::open_with_options(&path, &passphrase, &options)
            .await
            .unwrap();
        assert_eq!(ks.generation(), 0);
        let digest = [5u8; 32];
        let sig = ks.sign_secp256k1_prehash(&identity, &digest).await.unwrap();
        let PublicKey::Secp256k1(pk) = pk else {
            panic!("{pk:?}")
        };
        assert!(sig.verify(&digest, &pk));
        assert_eq!(fs::read(&path).unwrap(), v1, "opening rewrote the file");

        ks.generate(&KeyLabel::new("tls").unwrap(), KeyKind::P256)
            .await
            .unwrap();
        assert_eq!(ks.generation(), 1);
        let (doc, _) = read_document(&path, Operation::Open).unwrap();
        assert_eq!((doc.version, doc.generation), (FORMAT_VERSION, 1));
        drop(ks);

        // The version 1 copy is older than what this host has used since.
        fs::write(&path, &v1).unwrap();
        let e = Keystore::open_with_options(&path, &passphrase, &options)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    }
}
