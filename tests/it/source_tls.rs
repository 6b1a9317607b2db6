//! TLS to the source: certificate verification is on by default, `ca_file` adds a CA.

use std::time::Duration;

use dirsync::config::{SecretRef, SourceConfig, SourceKind, Tls};
use dirsync::source::{ConnectOptions, LdapClient};
use dirsync::Error;

use crate::lab::{Slapd, SlapdOptions};

fn cfg(slapd: &Slapd, pw: &std::path::Path, ca_file: Option<std::path::PathBuf>) -> SourceConfig {
    SourceConfig {
        kind: SourceKind::Openldap,
        url: slapd.url(),
        tls: Tls::Starttls,
        ca_file,
        limits: Default::default(),
        bind_dn: slapd.bind_dn().into(),
        password: SecretRef::File(pw.to_path_buf()),
        base_dn: slapd.base_dn().into(),
        users: "(objectClass=inetOrgPerson)".into(),
        groups: "(objectClass=groupOfNames)".into(),
        include: vec![],
        exclude: vec![],
        anchor: None,
        mapped: Vec::new(),
        mapping_fingerprint: String::new(),
        member_of: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_verifies_the_server_and_ca_file_adds_a_ca() {
    let slapd = Slapd::start(SlapdOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, slapd.password()).unwrap();
    let opts = ConnectOptions {
        timeout: Duration::from_secs(10),
        danger_skip_tls_verify: false,
        ..Default::default()
    };

    // The lab CA is in no trust store: verification refuses the server.
    let err = LdapClient::connect(&cfg(&slapd, &pw, None), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err}");

    // With the CA given, the same server is trusted, and the bind works.
    let mut client = LdapClient::connect(&cfg(&slapd, &pw, Some(slapd.ca_file())), &opts)
        .await
        .unwrap();
    let root = client.root_dse(&["namingContexts"]).await.unwrap();
    assert_eq!(
        root.text("namingContexts").as_deref(),
        Some(slapd.base_dn())
    );
    // A paged search runs on a second connection: it too starts TLS and trusts the CA.
    let paged = client
        .paged_search(slapd.base_dn(), "(objectClass=*)", &["1.1"], &[], 1)
        .await
        .unwrap();
    assert!(paged.entries.iter().any(|e| e.dn == slapd.base_dn()));
    client.close().await;

    // A CA file that holds no certificate is a configuration error, named.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = LdapClient::connect(&cfg(&slapd, &pw, Some(junk)), &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("ca_file")),
        "{err}"
    );
    assert_eq!(err.exit(), dirsync::Exit::BadInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_to_a_server_without_tls_says_what_to_check() {
    let slapd = Slapd::start(SlapdOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, slapd.password()).unwrap();
    let err = LdapClient::connect(&cfg(&slapd, &pw, None), &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err}");
    let line = err.to_string();
    assert!(
        line.starts_with(&format!(
            "source: cannot connect to {}: StartTLS refused: ",
            slapd.url()
        )) && line.ends_with("check the server's TLS setup, or use ldaps://"),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}
