//! PostgreSQL over TLS against real servers on loopback: a private server with `ssl = on` and a
//! certificate from a test CA (started here), and the suite's plain server (SBTC_TEST_PG_URL).

mod storage_support;
#[path = "storage_support/tls_server.rs"]
mod tls_server;

use sbtc_hsm_signer::storage::{
    config::{PgSettings, Target},
    postgres::PgStore,
    ErrorKind, StorageConfig,
};
use storage_support::{pg_url_or_skip, skip_or_fail};
use tls_server::{TestCa, TlsServer};

fn settings(url: &str) -> PgSettings {
    let mut c = StorageConfig::postgres(url);
    // A TLS failure must be reported at once; this is only the bound for a server not up yet.
    c.connect_retry_secs = Some(20);
    c.operation_retry_secs = Some(20);
    match c.target().expect("url parses") {
        Target::Postgres(s) => *s,
        Target::Memory => unreachable!(),
    }
}

#[tokio::test]
async fn verify_full_connects_over_tls_and_wrong_certificates_are_refused() {
    let ca = TestCa::new("sbtc test CA");
    let Some(server) = TlsServer::start(&ca, &["127.0.0.1"]) else {
        skip_or_fail(
            "verify_full_connects_over_tls_and_wrong_certificates_are_refused",
            "no PostgreSQL server binaries (apt-get install postgresql)",
        );
        return;
    };
    let ca_file = server.dir().join("ca.pem");
    ca.write(&ca_file);
    let ca_q = format!("sslrootcert={}", ca_file.display());

    // verify-full with the right CA: connected, and the server sees a TLS session.
    let url = server.url("127.0.0.1", &format!("sslmode=verify-full&{ca_q}"));
    let store = PgStore::connect(settings(&url))
        .await
        .expect("verify-full connects");
    let version = store.session_tls().await.unwrap();
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "pg_stat_ssl says the session is not TLS: {version:?}"
    );
    // The plain server is the control: the same query says "no TLS" there.
    if let Some(plain) = pg_url_or_skip("verify_full_connects_over_tls (plain control)") {
        let plain = PgStore::connect(settings(&plain)).await.unwrap();
        assert_eq!(plain.session_tls().await.unwrap(), None);
    }

    // A CA that did not sign the server's certificate: a clear TLS error, at once.
    let other = TestCa::new("some other CA");
    let other_file = server.dir().join("other-ca.pem");
    other.write(&other_file);
    let url = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", other_file.display()),
    );
    // Kind Tls comes only from the no-retry path (a retried failure ends as Unavailable).
    let err = PgStore::connect(settings(&url)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not signed by a CA in sslrootcert") && text.contains("other-ca.pem"),
        "{text}"
    );

    // No sslrootcert: the built-in public roots do not know the test CA either.
    let err = PgStore::connect(settings(&server.url("127.0.0.1", "sslmode=verify-full")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("Mozilla roots"), "{err}");

    // The certificate is for 127.0.0.1, not for "localhost": verify-full refuses that name,
    // verify-ca (chain only) accepts it.
    let err = PgStore::connect(settings(
        &server.url("localhost", &format!("sslmode=verify-full&{ca_q}")),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(
        err.to_string().contains("not valid for the host name"),
        "{err}"
    );
    let store = PgStore::connect(settings(
        &server.url("localhost", &format!("sslmode=verify-ca&{ca_q}")),
    ))
    .await
    .expect("verify-ca ignores the host name");
    assert!(store.session_tls().await.unwrap().is_some());

    // require (libpq: encrypt, do not verify) connects over TLS with any certificate.
    let store = PgStore::connect(settings(&server.url("127.0.0.1", "sslmode=require")))
        .await
        .expect("require connects");
    assert!(store.session_tls().await.unwrap().is_some());
}

#[tokio::test]
async fn require_fails_clearly_against_a_server_without_tls() {
    let Some(plain) = pg_url_or_skip("require_fails_clearly_against_a_server_without_tls") else {
        return;
    };
    let sep = if plain.contains('?') { '&' } else { '?' };
    for mode in ["require", "verify-full"] {
        let url = format!("{plain}{sep}sslmode={mode}");
        let err = PgStore::connect(settings(&url)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
        assert!(
            err.to_string().contains("does not offer TLS"),
            "{mode}: {err}"
        );
    }
    // prefer on loopback falls back to plain, as libpq does.
    let store = PgStore::connect(settings(&format!("{plain}{sep}sslmode=prefer")))
        .await
        .unwrap();
    assert_eq!(store.session_tls().await.unwrap(), None);
}
