//! The devnet cluster: a local network of signers on 127.0.0.1. Makes a work dir with, for each signer, an
//! encrypted keystore (cheap test KDF) holding its identity, TLS and seal keys, a passphrase file
//! and a config whose bootstrap set names every signer; starts one `sbtc-hsm-signer run` process
//! per signer; waits for them to form and verify a threshold key and sign a demo batch; checks the
//! signatures again here; and stops every child, also on Ctrl-C.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand::RngCore;
use sbtc_custody::{PublicKey, Role};
use zeroize::Zeroizing;

use super::demo::{self, RunResult};
use super::regtest::{RegtestNode, RegtestOptions, RpcAuth};
use super::stacks::{StacksNode, StacksNodeOptions};
use crate::chain::stacks::address::StacksNetwork;
use crate::{config::Config, node::Shutdown, signing::DkgId};

/// Where each devnet signer keeps its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DevnetBackend {
    Keystore,
    Softhsm,
    /// Keystores and SoftHSM2 tokens, alternating, in one signer set.
    Mixed,
}

/// The running children; dropping this stops every one still running.
struct Children(Vec<(u32, Child)>);

impl Children {
    /// Err naming the first signer that exited.
    fn check_alive(&mut self) -> Result<(), (Option<u32>, String)> {
        for (i, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err((Some(*i), format!("signer {i} exited early with {status}")));
            }
        }
        Ok(())
    }

    /// SIGTERM first (a clean shutdown: a signer finishes its tenure and writes its result),
    /// then SIGKILL for any still running after 15 s.
    fn stop_all(&mut self) {
        for (_, child) in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline
            && self
                .0
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, child) in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

struct SignerFiles {
    /// `memory` or this signer's own PostgreSQL database.
    storage_url: String,
    /// The `[custody]` part of the config.
    custody: String,
    /// SOFTHSM2_CONF for this signer's token dir (`--backend softhsm`).
    softhsm2_conf: Option<PathBuf>,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    result: PathBuf,
    port: u16,
    /// The deposit API and Stacks event observer.
    api_port: u16,
    identity: String,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn path_str(p: &Path) -> Result<String, Box<dyn std::error::Error>> {
    Ok(toml_str(p.to_str().ok_or_else(|| {
        format!(
            "work dir path {} is not UTF-8; pass --work-dir",
            p.display()
        )
    })?))
}

/// `[custody]` for a keystore file in `dir` with a cheap KDF.
fn keystore_section(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let mut t = String::new();
    writeln!(t, "[custody]\nbackend = \"keystore\"\n[custody.keystore]")?;
    writeln!(t, "path = {}", path_str(&dir.join("keystore.json"))?)?;
    writeln!(
        t,
        "passphrase_file = {}",
        path_str(&dir.join("passphrase"))?
    )?;
    writeln!(
        t,
        "[custody.keystore.kdf]\ninsecure_test_kdf = true\nmemory_kib = 1024\niterations = 1\nparallelism = 1"
    )?;
    Ok(t)
}

/// `[custody]` for the SoftHSM2 token `label` whose PIN is in `dir/pin`.
fn softhsm_section(
    module: &Path,
    label: &str,
    dir: &Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut t = String::new();
    writeln!(t, "[custody]\nbackend = \"pkcs11\"\n[custody.pkcs11]")?;
    writeln!(t, "module = {}", path_str(module)?)?;
    writeln!(t, "token_label = {}", toml_str(label))?;
    writeln!(t, "pin_file = {}", path_str(&dir.join("pin"))?)?;
    Ok(t)
}

/// A random secret of `n` bytes as hex.
fn random_hex(n: usize) -> Zeroizing<String> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Zeroizing::new(hex::encode(&*bytes))
}

/// The config of signer `dir` with `custody` (its `[custody]` section) listening on `port`, with
/// `bootstrap` (identity, endpoint) pairs.
fn config_text(
    custody: &str,
    bitcoin: &str,
    storage_url: &str,
    dir: &Path,
    (port, api_port): (u16, u16),
    bootstrap: &[(String, u16)],
    max_message_bytes: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut t = String::new();
    writeln!(
        t,
        "# Devnet signer: throwaway keys. Never use for real funds."
    )?;
    t.push_str(custody);
    t.push_str(bitcoin);
    // The deposit API and event observer belong with the chains: a config without them has
    // none.
    if !bitcoin.is_empty() {
        writeln!(t, "[api]\nlisten = \"127.0.0.1:{api_port}\"")?;
    }
    writeln!(t, "[storage]\nurl = {}", toml_str(storage_url))?;
    writeln!(t, "[peer]\nlisten = \"127.0.0.1:{port}\"")?;
    writeln!(t, "cert_path = {}", path_str(&dir.join("peer-cert.der"))?)?;
    writeln!(t, "max_message_bytes = {max_message_bytes}")?;
    for (identity, port) in bootstrap {
        writeln!(
            t,
            "[[peer.bootstrap]]\nidentity = \"{identity}\"\nendpoint = \"127.0.0.1:{port}\""
        )?;
    }
    Ok(t)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Free ports on 127.0.0.1, found by binding port 0 (released again before the children bind).
fn free_ports(n: u32) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the devnet is asked to do (the `devnet` command's options).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub signers: u32,
    pub threshold: u32,
    pub batch: usize,
    pub work_dir: Option<PathBuf>,
    pub timeout: u64,
    pub backend: DevnetBackend,
    pub postgres: Option<String>,
    pub pkcs11_module: PathBuf,
    /// Deposits the built-in depositor makes once the key is registered (0: none).
    pub deposits: usize,
}

/// Runs the devnet to the end; the exit code says whether every check passed.
pub async fn run(opts: ClusterOptions) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut shutdown = Shutdown::register();
    let (n, t) = (opts.signers, opts.threshold);
    if n < 2 || t == 0 || t > n {
        return Err(format!("need at least 2 signers and 1 <= threshold <= signers (have {n} signers, threshold {t})").into());
    }
    if opts.batch > crate::signing::MAX_BATCH {
        return Err(format!("--batch is at most {}", crate::signing::MAX_BATCH).into());
    }
    let work = match &opts.work_dir {
        Some(d) => d.clone(),
        None => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            std::env::temp_dir().join(format!(
                "sbtc-hsm-signer-devnet-{secs}-{}",
                std::process::id()
            ))
        }
    };
    if work.exists() && fs::read_dir(&work)?.next().is_some() {
        return Err(format!(
            "work dir {} is not empty; pass an empty or new --work-dir",
            work.display()
        )
        .into());
    }
    fs::create_dir_all(&work)?;
    println!("devnet work dir: {}", work.display());
    println!("{n} signers, threshold {t}, demo batch {}", opts.batch);

    // 1. Keys: a keystore per signer (made in-process through the custody API) or a SoftHSM2
    // token per signer (keys made by `keys generate` in a child that sees its token dir).
    // Peer ports, then API ports, from one call so no two are the same.
    let all_ports = free_ports(2 * n)?;
    let (ports, api_ports) = all_ports.split_at(n as usize);
    let setup = Instant::now();
    let mut signers = Vec::with_capacity(n as usize);
    for (i, port) in ports.iter().enumerate() {
        let dir = work.join(format!("signer-{i}"));
        fs::create_dir_all(&dir)?;
        let backend = match opts.backend {
            // Even signers keep a keystore, odd ones a SoftHSM2 token: one set, both backends.
            DevnetBackend::Mixed if i % 2 == 0 => DevnetBackend::Keystore,
            DevnetBackend::Mixed => DevnetBackend::Softhsm,
            other => other,
        };
        let (custody_section, env) = match backend {
            DevnetBackend::Keystore | DevnetBackend::Mixed => {
                write_private(&dir.join("passphrase"), random_hex(32).as_bytes())?;
                (keystore_section(&dir)?, None)
            }
            DevnetBackend::Softhsm => {
                let label = format!("devnet-signer-{i}");
                let conf = softhsm_token(&dir, &label)?;
                (
                    softhsm_section(&opts.pkcs11_module, &label, &dir)?,
                    Some(conf),
                )
            }
        };
        let identity = match &env {
            None => keystore_keys(&custody_section, &dir).await?,
            Some(conf) => cli_keys(&custody_section, &dir, conf)?,
        };
        let storage_url = match &opts.postgres {
            None => "memory".to_string(),
            Some(url) => create_database(url, &work, i).await?,
        };
        signers.push(SignerFiles {
            storage_url,
            custody: custody_section,
            softhsm2_conf: env,
            config: dir.join("signer.toml"),
            log: dir.join("signer.log"),
            result: dir.join("result.json"),
            dir,
            port: *port,
            api_port: api_ports[i],
            identity,
        });
    }
    // A share request carries every chosen signer's nonces for every sighash (about 1.5 KB
    // per sighash for 5 signers as JSON): raise the 1 MiB default for big demo batches.
    let max_message_bytes = (opts.batch * n as usize * 400 + (1 << 20)).min(64 << 20);
    let bootstrap: Vec<(String, u16)> = signers
        .iter()
        .map(|s| (s.identity.clone(), s.port))
        .collect();
    // The devnet's Bitcoin: a regtest node in this process behind bitcoind's RPC, with a mature
    // wallet. Every signer's observer follows it and runs its session on its tip.
    let regtest_dir = work.join("regtest");
    fs::create_dir_all(&regtest_dir)?;
    let cookie = regtest_dir.join(".cookie");
    let regtest = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: None,
            cookie_file: Some(cookie.clone()),
        },
        ..RegtestOptions::default()
    })
    .await?;
    regtest.mine(101);
    let (tip_height, tip) = regtest.tip();
    println!(
        "bitcoin: regtest node on {} (cookie {}), tip {tip} at height {tip_height}",
        regtest.rpc_url(),
        cookie.display()
    );
    let bitcoin_section = format!(
        "[bitcoin]\nnetwork = \"regtest\"\nrpc_url = {}\nrpc_cookie_file = {}\npoll_interval_secs = 1\n",
        toml_str(&regtest.rpc_url()),
        path_str(&cookie)?
    );
    // The devnet's Stacks: our Stacks node, anchored to the regtest chain, whose sBTC registry
    // starts with the signers as the bootstrap set; as in the official devnet, the deployer is
    // their multisig account, funded for fees.
    let identities = signers
        .iter()
        .map(|s| {
            hex::decode(&s.identity)
                .ok()
                .and_then(|b| secp256k1::PublicKey::from_slice(&b).ok())
                .ok_or_else(|| format!("signer identity {} is not a public key", s.identity))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stacks_bitcoin = crate::chain::bitcoin::rpc::BitcoindRpc::with_auth(
        &regtest.rpc_url(),
        crate::chain::bitcoin::rpc::RpcAuth::Cookie(cookie.clone()),
        Duration::from_secs(10),
        3,
    )?;
    let mut stacks_options = StacksNodeOptions::new(
        std::sync::Arc::new(stacks_bitcoin),
        identities.clone(),
        t as u16,
    );
    let mut sorted = identities.clone();
    sorted.sort_by_key(|k| k.serialize());
    let signers_principal =
        super::stacks::multisig_principal(StacksNetwork::Testnet, &sorted, t as u16);
    stacks_options.balances = vec![(signers_principal.clone(), 100_000_000)];
    stacks_options.poll_interval = Duration::from_millis(500);
    // Each signer's event observer: stacks-node's [[events_observer]], on the signer's API.
    stacks_options.observers = signers
        .iter()
        .map(|s| format!("http://127.0.0.1:{}", s.api_port))
        .collect();
    let stacks = StacksNode::start(stacks_options).await?;
    if *stacks.deployer() != signers_principal {
        return Err(format!(
            "the Stacks node's deployer {} is not the signers' account {signers_principal}",
            stacks.deployer()
        )
        .into());
    }
    println!(
        "stacks: our Stacks node on {}, deployer and signers' account {signers_principal} ({t} of {n})",
        stacks.rpc_url()
    );
    let bitcoin_section = format!(
        "{bitcoin_section}[stacks]\nnode_url = {}\ndeployer = {}\n",
        toml_str(&stacks.rpc_url()),
        toml_str(&stacks.deployer().to_string())
    );
    for s in &signers {
        fs::write(
            &s.config,
            config_text(
                &s.custody,
                &bitcoin_section,
                &s.storage_url,
                &s.dir,
                (s.port, s.api_port),
                &bootstrap,
                max_message_bytes,
            )?,
        )?;
    }
    println!("keys generated in {} ms", setup.elapsed().as_millis());

    // 2. One `run` process per signer.
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::with_capacity(n as usize));
    let mut pids = String::new();
    for (i, s) in signers.iter().enumerate() {
        let log = fs::File::create(&s.log)?;
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(&s.config)
            .arg("run")
            .args(["--threshold", &t.to_string()])
            .args(["--demo-batch", &opts.batch.to_string()])
            .args(["--connect-timeout", &opts.timeout.to_string()])
            .args(["--phase-timeout", &opts.timeout.to_string()])
            .arg("--result-file")
            .arg(&s.result)
            .arg("--nonce-ledger")
            .arg(s.result.with_file_name("nonce-ledger"))
            .arg("--peg")
            .arg("--migrate")
            .args(opts.postgres.is_none().then_some("--ephemeral"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(conf) = &s.softhsm2_conf {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        if crate::logging::choose(|n| std::env::var_os(n)).is_ok_and(|c| c.source.is_none()) {
            cmd.env(crate::logging::SBTC_LOG, crate::logging::DEVNET_DIRECTIVES);
        }
        let child = cmd.spawn()?;
        writeln!(pids, "{}", child.id())?;
        println!(
            "signer {i}: identity {} on 127.0.0.1:{} (pid {}, log {})",
            s.identity,
            s.port,
            child.id(),
            s.log.display()
        );
        children.0.push((i as u32, child));
    }
    fs::write(work.join("pids"), &pids)?;

    // 3. Drive the chains as miners would: a block whenever a signer put a transaction in a
    // mempool, until the sBTC registry names the signers' new key (the DKG, its verification and
    // the bootstrap rotate-keys-wrapper are done). Bounded by --timeout, or a signal.
    let timeout = Duration::from_secs(opts.timeout);
    let mut registered = None;
    let driven = tokio::select! {
        r = drive_until_registered(&regtest, &stacks, &mut children, timeout) => Some(r),
        _ = shutdown.wait() => None,
    };
    let failure = match driven {
        None => {
            eprintln!("signal received; stopping the signers");
            children.stop_all();
            return Ok(ExitCode::from(130));
        }
        Some(Ok(peg)) => {
            registered = Some(peg.aggregate_key.clone());
            println!(
                "stacks: the registry names the aggregate key {} after {} Bitcoin blocks ({} ms)",
                peg.aggregate_key, peg.blocks_mined, peg.elapsed_ms
            );
            None
        }
        Some(Err(e)) => Some(e),
    };
    // 4. The peg: a donation, the depositor's deposits, sweeps and mints, as miners mine.
    let mut peg_summary = None;
    let failure = match (failure, registered.as_deref()) {
        (None, Some(key)) if opts.deposits > 0 => {
            let key = crate::keys::AggregateKey::from_slice(&hex::decode(key)?)?;
            let apis: Vec<String> = signers
                .iter()
                .map(|s| format!("http://127.0.0.1:{}", s.api_port))
                .collect();
            println!(
                "peg: donating {} to the signers' key-path address, then {} deposits through the signers' deposit APIs",
                super::peg_run::DONATION,
                opts.deposits
            );
            let children_ref = &mut children;
            let alive = move || children_ref.check_alive();
            let driven = tokio::select! {
                r = super::peg_run::run(&regtest, &stacks, &key, &apis, opts.deposits, timeout, alive) => Some(r),
                _ = shutdown.wait() => None,
            };
            match driven {
                None => {
                    eprintln!("signal received; stopping the signers");
                    children.stop_all();
                    return Ok(ExitCode::from(130));
                }
                Some(Ok(summary)) => {
                    peg_summary = Some(summary);
                    None
                }
                Some(Err(e)) => Some(e),
            }
        }
        (failure, _) => failure,
    };
    // The signers stop on SIGTERM, finishing what they are doing, and write their results.
    children.stop_all();
    if let Some((signer, why)) = failure {
        if let Some(s) = signer.and_then(|i| signers.get(i as usize)) {
            eprintln!("last lines of {}:\n{}", s.log.display(), tail(&s.log, 20));
        }
        return Err(format!("{why}; logs are in {}", work.display()).into());
    }

    // 5. Check the results here, independently of the signers.
    let peg_ok = match &peg_summary {
        Some(summary) => print_peg_summary(summary, &stacks, opts.deposits),
        None => true,
    };
    let code = report(
        &signers,
        opts.batch,
        &work,
        &tip,
        &identities,
        t,
        registered.as_deref(),
    )?;
    stacks.stop().await;
    regtest.stop().await;
    Ok(if peg_ok { code } else { ExitCode::FAILURE })
}

/// Prints what the peg did, read back from the chains; false when a deposit was not minted.
fn print_peg_summary(
    summary: &super::peg_run::PegSummary,
    stacks: &StacksNode,
    made: usize,
) -> bool {
    if let Some(d) = &summary.donation {
        println!("peg: donation {d} started the signers' UTXO");
    }
    for s in &summary.sweeps {
        println!(
            "peg: sweep {} in block {}: {} inputs, {} vB, fee {} sats ({:.1} sat/vB)",
            s.txid,
            s.height,
            s.inputs,
            s.vsize,
            s.fee.to_sat(),
            s.fee.to_sat() as f64 / s.vsize.max(1) as f64
        );
    }
    let minted = summary.minted.len();
    println!(
        "peg: {minted} of {made} deposits swept and minted as sBTC ({} Bitcoin blocks, {:.1} s)",
        summary.blocks_mined,
        summary.elapsed.as_secs_f64()
    );
    let mut recipients: std::collections::BTreeMap<&str, (usize, u128)> = Default::default();
    for m in &summary.minted {
        let e = recipients.entry(m.deposit.recipient.as_str()).or_default();
        e.0 += 1;
        e.1 += m.minted;
    }
    let mut balances_ok = true;
    for (who, (count, total)) in &recipients {
        let balance = super::peg_run::balance(stacks, who);
        println!(
            "peg: {who} received {total} sBTC sats from {count} deposits (sbtc-token balance {})",
            balance.map_or("unreadable".to_string(), |b| b.to_string())
        );
        if balance != Some(*total) {
            balances_ok = false;
        }
    }
    if let (Some(fast), Some(slow)) = (
        summary
            .minted
            .iter()
            .map(|m| m.mint_height - m.deposit.height)
            .min(),
        summary
            .minted
            .iter()
            .map(|m| m.mint_height - m.deposit.height)
            .max(),
    ) {
        let secs: Vec<f64> = summary
            .minted
            .iter()
            .map(|m| m.elapsed.as_secs_f64())
            .collect();
        let max_secs = secs.iter().copied().fold(0.0, f64::max);
        println!("peg: deposit to mint: {fast} to {slow} Bitcoin blocks, at most {max_secs:.1} s");
    }
    for p in &summary.pending {
        eprintln!("peg: deposit {} of {} was NOT minted", p.outpoint, p.amount);
    }
    minted == made && balances_ok
}

/// Creates a fresh database for signer `i` on the server of `admin_url`; returns its URL.
async fn create_database(
    admin_url: &str,
    work: &Path,
    i: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    let (base, _) = admin_url
        .rsplit_once('/')
        .filter(|(b, _)| b.contains("://"))
        .ok_or("--postgres must look like postgresql://user@host:port/database")?;
    // Unique per work dir, so devnets can share a server.
    let tag: [u8; 4] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        work.as_os_str().as_encoded_bytes(),
    ))[..4]
        .try_into()?;
    let name = format!("sbtc_devnet_{}_{i}", hex::encode(tag));
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to --postgres {}: {e}", redact(admin_url)))?;
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
    drop(client);
    let _ = conn.await;
    Ok(format!("{}/{name}", redact(base)))
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(s, rest)| {
        rest.rsplit_once('@')
            .map(|(user, host)| (s, user.split(':').next().unwrap_or(""), host))
    }) {
        Some((scheme, user, host)) => format!("{scheme}://{user}@{host}"),
        None => url.to_string(),
    }
}

/// Makes the keystore and its keys in-process through the custody API; returns the identity key.
async fn keystore_keys(
    custody_section: &str,
    dir: &Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let config = Config::parse(&config_text(
        custody_section,
        "",
        "memory",
        dir,
        (0, 0),
        &[],
        1 << 20,
    )?)?;
    let section = config.needs_custody("devnet")?;
    crate::keys::init(section).await?;
    let custody = crate::keys::open(section).await?;
    let mut identity = None;
    for role in Role::ALL {
        let info = custody
            .generate(&config.keys.label(role), role.kind())
            .await?;
        if let (Role::Identity, Some(PublicKey::Secp256k1(k))) = (role, &info.public_key) {
            identity = Some(hex::encode(k.serialize()));
        }
    }
    Ok(identity.ok_or("the identity key has no secp256k1 public key")?)
}

/// A SoftHSM2 token `label` in its own token dir under `dir` (PIN in `dir/pin`, mode 0600);
/// returns the SOFTHSM2_CONF path. PKCS#11 modules read their config once per process, so the
/// keys of each token are made by a child process (`keys generate`), not in this one.
fn softhsm_token(dir: &Path, label: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    // Digits only: every PKCS#11 token accepts them.
    let pin = Zeroizing::new(
        random_hex(8)
            .bytes()
            .map(|b| char::from(b'0' + b % 10))
            .collect::<String>(),
    );
    let so_pin = random_hex(8);
    write_private(&dir.join("pin"), pin.as_bytes())?;
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", pin.as_str(), "--so-pin", so_pin.as_str()])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|e| {
            format!("cannot run softhsm2-util ({e}); install softhsm2 (apt-get install softhsm2)")
        })?;
    if !out.status.success() {
        return Err(format!(
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(conf)
}

/// Makes the role keys with `keys generate` in a child that sees `conf`; returns the identity key.
fn cli_keys(
    custody_section: &str,
    dir: &Path,
    conf: &Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let config = dir.join("keys.toml");
    fs::write(
        &config,
        config_text(custody_section, "", "memory", dir, (0, 0), &[], 1 << 20)?,
    )?;
    let exe = std::env::current_exe()?;
    let mut identity = None;
    for role in Role::ALL {
        let out = Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .args(["keys", "generate", "--role", role.as_str()])
            .env("SOFTHSM2_CONF", conf)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "keys generate --role {role} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        if role == Role::Identity {
            identity = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .last()
                .map(str::to_owned);
        }
    }
    let identity = identity.ok_or("`keys generate --role identity` printed no public key")?;
    let bytes = hex::decode(&identity)?;
    secp256k1::PublicKey::from_slice(&bytes)
        .map_err(|_| format!("`keys generate` printed {identity}, not a secp256k1 key"))?;
    Ok(identity)
}

/// Waits until every child exited successfully; fails at the first failure or at the timeout.
/// What the devnet saw the peg do.
struct PegProgress {
    aggregate_key: String,
    blocks_mined: u32,
    elapsed_ms: u128,
}

/// The registry's current aggregate key on the devnet's Stacks node, if it names one.
fn registered_key(stacks: &StacksNode) -> Option<String> {
    use crate::chain::stacks::clarity::Value;
    match stacks.read_only("sbtc-registry", "get-current-aggregate-pubkey", &[]) {
        Ok(Value::Buffer(b)) if b.len() == 33 => Some(hex::encode(b)),
        _ => None,
    }
}

/// Mines a Bitcoin block (and so a Stacks block) whenever a mempool holds something, until the
/// registry names a key; fails when a signer exits or after `timeout`.
async fn drive_until_registered(
    regtest: &RegtestNode,
    stacks: &StacksNode,
    children: &mut Children,
    timeout: Duration,
) -> Result<PegProgress, (Option<u32>, String)> {
    let start = Instant::now();
    let mut blocks_mined = 0;
    loop {
        for (i, child) in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err((Some(*i), format!("signer {i} exited early with {status}")));
            }
        }
        if let Some(key) = registered_key(stacks) {
            return Ok(PegProgress {
                aggregate_key: key,
                blocks_mined,
                elapsed_ms: start.elapsed().as_millis(),
            });
        }
        let waiting = stacks.with_state(|s| !s.mempool.is_empty())
            || regtest.with_state(|s| !s.mempool.is_empty());
        if waiting {
            regtest.mine(1);
            blocks_mined += 1;
            if let Err(e) = stacks.sync().await {
                return Err((
                    None,
                    format!("the Stacks node did not follow the block: {e}"),
                ));
            }
        }
        if start.elapsed() >= timeout {
            return Err((
                None,
                format!(
                    "the sBTC registry names no signers' key after {}s (--timeout): the DKG, its \
                     verification or the rotate-keys call did not finish",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn report(
    signers: &[SignerFiles],
    batch: usize,
    work: &Path,
    tip: &bitcoin::BlockHash,
    identities: &[secp256k1::PublicKey],
    threshold: u32,
    registered: Option<&str>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut results = Vec::with_capacity(signers.len());
    for s in signers {
        let text = fs::read(&s.result)
            .map_err(|e| format!("no result from {}: {e}", s.result.display()))?;
        results.push(serde_json::from_slice::<RunResult>(&text)?);
    }
    let first = results.first().ok_or("no signers")?;
    let mut ok = true;
    if results
        .iter()
        .any(|r| r.aggregate_key != first.aggregate_key)
    {
        eprintln!("the signers disagree on the aggregate key");
        ok = false;
    }
    let on_tip = results
        .iter()
        .filter(|r| r.chain_tip == tip.to_string())
        .count();
    if on_tip == results.len() {
        println!(
            "chain tip: every signer read {tip} (height {}) from the regtest node",
            first.chain_height
        );
    } else {
        eprintln!(
            "only {on_tip} of {} signers ran on the regtest node's tip {tip}",
            results.len()
        );
        ok = false;
    }
    // Every signer read the registry's bootstrap set from the Stacks node, sorted as the
    // signers' multisig account orders it.
    let mut expected_set: Vec<String> = identities
        .iter()
        .map(|k| hex::encode(k.serialize()))
        .collect();
    expected_set.sort();
    let read_set = results
        .iter()
        .filter(|r| {
            r.stacks.as_ref().is_some_and(|s| {
                s.signer_set == expected_set && s.threshold == Some(threshold as u16)
            })
        })
        .count();
    if read_set == results.len() {
        println!(
            "stacks: every signer read the sBTC registry's signer set ({} keys, threshold {threshold}) from the Stacks node",
            expected_set.len()
        );
    } else {
        eprintln!(
            "only {read_set} of {} signers read the registry's signer set ({} keys, threshold {threshold}) from the Stacks node",
            results.len(),
            expected_set.len()
        );
        ok = false;
    }
    let verified = results
        .iter()
        .filter(|r| r.dkg_status == "verified")
        .count();
    let coordinator = results
        .iter()
        .find(|r| r.signer_index == r.coordinator)
        .ok_or("no result from the coordinator")?;
    let key_bytes = hex::decode(&first.aggregate_key)?;
    let aggregate = secp256k1::PublicKey::from_slice(&key_bytes)?;
    println!("aggregate key: {}", first.aggregate_key);
    let rotations: usize = results
        .iter()
        .filter_map(|r| r.peg.as_ref())
        .map(|p| {
            p.stacks_submitted
                .iter()
                .filter(|(f, _)| f == "rotate-keys-wrapper")
                .count()
        })
        .sum();
    if registered == Some(first.aggregate_key.as_str()) && rotations >= 1 {
        println!(
            "stacks: rotate-keys-wrapper signed by the signers' multisig registered the key in the sBTC registry"
        );
    } else {
        eprintln!(
            "the sBTC registry names {} and the signers submitted {rotations} rotations; expected {}",
            registered.unwrap_or("no key"),
            first.aggregate_key
        );
        ok = false;
    }
    if verified == results.len() {
        println!(
            "DKG verification: verified by all {} signers (Bitcoin Core's script verifier accepted a taproot key spend of the new key)",
            results.len()
        );
    } else {
        ok = false;
        println!(
            "DKG verification: FAILED ({verified} of {} signers verified; {})",
            results.len(),
            coordinator.dkg_failure.as_deref().unwrap_or("no detail")
        );
    }
    // Re-derive the demo sighashes and check every signature here with libsecp256k1.
    let expected = demo::demo_requests(DkgId(coordinator.dkg_id), &aggregate, batch);
    let mut good = 0;
    for (i, sig) in coordinator.signatures.iter().enumerate() {
        let matches = expected.get(i).is_some_and(|r| {
            hex::encode(r.sighash) == sig.sighash && demo::kind_name(r.kind) == sig.kind
        });
        match demo::verify_demo_signature(&aggregate, sig) {
            Ok(()) if matches => good += 1,
            Ok(()) => eprintln!("signature {i} is for a sighash the devnet did not ask for"),
            Err(e) => eprintln!("signature {i}: {e}"),
        }
    }
    println!(
        "signatures verified: {good}/{batch} (BIP-340, key-spend and script-path, re-checked by the devnet)"
    );
    if good != batch {
        ok = false;
    }
    let dir_index = signers
        .iter()
        .position(|s| s.identity == coordinator.identity)
        .map_or("?".to_string(), |i| i.to_string());
    println!(
        "coordinator: signer {dir_index} (index {} of {} in the sorted signer set, chosen from the chain tip), threshold {}",
        coordinator.coordinator, coordinator.signers, coordinator.threshold
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    println!(
        "timings (coordinator): peer mesh {} ms, DKG {} ms, verification {}, batch of {batch} {}",
        coordinator.connect_ms,
        coordinator.dkg_ms,
        opt(coordinator.verification_ms),
        opt(coordinator.batch_ms)
    );
    println!(
        "logs: {}/signer-*/signer.log; results: {}/signer-*/result.json",
        work.display(),
        work.display()
    );
    println!("all signers stopped");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
