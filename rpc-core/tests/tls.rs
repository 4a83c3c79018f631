//! `amqps://` connects over TLS and verifies the broker's certificate. The
//! broker here has no TLS listener, so the test puts a TLS-terminating proxy
//! in front of it, with certificates from a CA generated per test run.

mod common;

use common::{calc_service, Probe};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rpc_core::{json, Args, Config, RetryPolicy, RpcProxy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use test_support::{unique_name, Cleanup};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for `host`, signed by `ca`: (cert DER, key DER).
fn server_cert(ca: &Ca, host: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let params = CertificateParams::new(vec![host.to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// Terminates TLS on a loopback port and forwards to the broker.
async fn tls_proxy(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    broker: SocketAddr,
) -> SocketAddr {
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(broker).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    addr
}

fn broker_addr(uri: &str) -> SocketAddr {
    let authority = uri.split_once("://").unwrap().1.split('/').next().unwrap();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .unwrap()
        .next()
        .unwrap()
}

fn write_pem(dir: &tempfile::TempDir, pem: &str) -> PathBuf {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn amqps_config(port: u16, ca_file: Option<PathBuf>) -> Config {
    let mut config = Config::new(&format!("amqps://guest:guest@localhost:{port}/%2f")).unwrap();
    config.tls_ca_file = ca_file;
    config.connect_retry = RetryPolicy::once();
    config.rpc_timeout = Duration::from_secs(10);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_connects_when_the_certificate_chains_to_the_given_ca() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-tls");
    let _cleanup = Cleanup::new().service(&name);
    let (probe, _) = Probe::new();
    let mut svc = calc_service(&name, probe).spawn(Config::new(&uri).unwrap());
    svc.ready().await.unwrap();

    let ca = new_ca("test CA");
    let (cert, key) = server_cert(&ca, "localhost");
    let port = tls_proxy(cert, key, broker_addr(&uri)).await.port();
    let dir = tempfile::tempdir().unwrap();
    let p = RpcProxy::connect(amqps_config(port, Some(write_pem(&dir, &ca.pem))))
        .await
        .expect("TLS connection with a trusted CA");
    assert_eq!(
        p.call(&name, "add", Args::new().arg(40).arg(2))
            .await
            .unwrap(),
        json!(42)
    );
    p.close().await;
    svc.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_a_certificate_from_an_unknown_ca() {
    let uri = test_support::require_broker();
    let ca = new_ca("test CA");
    let (cert, key) = server_cert(&ca, "localhost");
    let port = tls_proxy(cert, key, broker_addr(&uri)).await.port();
    // Neither the system's roots nor another CA vouch for it.
    let err = RpcProxy::connect(amqps_config(port, None))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("unknown CA: {err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let other = new_ca("another CA");
    let dir = tempfile::tempdir().unwrap();
    let err = RpcProxy::connect(amqps_config(port, Some(write_pem(&dir, &other.pem))))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_a_certificate_for_another_host() {
    let uri = test_support::require_broker();
    let ca = new_ca("test CA");
    let (cert, key) = server_cert(&ca, "broker.example.invalid");
    let port = tls_proxy(cert, key, broker_addr(&uri)).await.port();
    let dir = tempfile::tempdir().unwrap();
    let err = RpcProxy::connect(amqps_config(port, Some(write_pem(&dir, &ca.pem))))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("NotValidForName"),
        "{err}"
    );
}
