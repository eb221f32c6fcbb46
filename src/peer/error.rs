use std::path::PathBuf;

/// What went wrong on the peer links, for the operator.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Custody(#[from] sbtc_custody::Error),
    #[error("peer certificate: {0}")]
    Certificate(String),
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}. Is another signer using the port?")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("[peer] config: {0}")]
    Config(String),
    #[error("peer {peer}: {reason}")]
    Link { peer: String, reason: String },
}
