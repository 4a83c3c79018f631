//! `amqps://` connects over TLS and verifies the broker's certificate. The
//! broker here has no TLS listener, so the test puts a TLS-terminating proxy
//! in front of it, with certificates from a CA generated per test run.

mod common;

use common::{add, calc_service, Probe};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rpc_core::{json, Config, RetryPolicy, RpcProxy};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tempfile::NamedTempFile;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

struct Ca {
    /// Its certificate in PEM, in a file that lives as long as the CA (the
    /// client reads it at each connect).
    pem_file: NamedTempFile,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let mut pem_file = NamedTempFile::new().unwrap();
    pem_file.write_all(cert.pem().as_bytes()).unwrap();
    Ca {
        pem_file,
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
    test_support::broker_hostport(uri)
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}

/// Connects over TLS to the proxy on `port`, trusting `ca` if given (and
/// the system's roots otherwise).
async fn connect_amqps(port: u16, ca: Option<&Ca>) -> Result<RpcProxy, rpc_core::ConnectError> {
    let mut config = Config::new(&format!("amqps://guest:guest@localhost:{port}/%2f")).unwrap();
    config.tls_ca_file = ca.map(|ca| ca.pem_file.path().to_owned());
    config.connect_retry = RetryPolicy::once();
    config.rpc_timeout = Duration::from_secs(10);
    RpcProxy::connect(config).await
}

/// Why connecting over TLS to `port`, trusting `ca`, failed.
async fn connect_error(port: u16, ca: Option<&Ca>) -> String {
    match connect_amqps(port, ca).await {
        Ok(_) => panic!("connected over TLS to a broker it should not trust"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_connects_when_the_certificate_chains_to_the_given_ca() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-tls");
    let _cleanup = Cleanup::new().service(&name);
    let (probe, _) = Probe::new();
    let mut svc = calc_service(&name, probe).spawn(Config::new(&uri).unwrap());
    svc.ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();

    let ca = new_ca("test CA");
    let (cert, key) = server_cert(&ca, "localhost");
    let port = tls_proxy(cert, key, broker_addr(&uri)).await.port();
    let p = connect_amqps(port, Some(&ca))
        .await
        .expect("TLS connection with a trusted CA");
    assert_eq!(add(&p, &name, 40, 2).await, json!(42));
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_a_certificate_from_an_unknown_ca() {
    let uri = test_support::require_broker();
    let ca = new_ca("test CA");
    let (cert, key) = server_cert(&ca, "localhost");
    let port = tls_proxy(cert, key, broker_addr(&uri)).await.port();
    // Neither the system's roots nor another CA vouch for it.
    let err = connect_error(port, None).await;
    eprintln!("unknown CA: {err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let other = new_ca("another CA");
    let err = connect_error(port, Some(&other)).await;
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
    let err = connect_error(port, Some(&ca)).await;
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("NotValidForName"),
        "{err}"
    );
}
