//! A stop always ends: SIGTERM with the broker gone silent (its TCP
//! connection open, nothing answering, so no cancel-ok, confirm or
//! close-ok ever comes) and an HTTP client that never finishes its request.
//! The process exits on its own within its shutdown timeout plus the
//! bounded closes, with status 0.

mod helpers;

use helpers::process::{ProcessTest, ServiceProcess};
use rpc_core::Config;
use std::io::Write;
use std::time::{Duration, Instant};
use test_support::faulty::FaultyProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_the_broker_silent_and_a_stalled_http_client_ends_in_time() {
    let uri = test_support::require_broker();
    let t = ProcessTest::new("person-stop", Config::new(&uri).unwrap()).await;
    let faulty = FaultyProxy::in_front_of(&uri).await;
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    };
    let http = format!("127.0.0.1:{port}");
    let mut svc = ServiceProcess::spawn_with(
        &t.name,
        &t.db,
        &t.path("person.log"),
        &faulty.uri(&uri),
        &["--shutdown-timeout", "1", "--http", &http],
    );
    svc.wait_ready(&t.proxy).await;

    // Half a request: the headers promise a body that never comes.
    let mut stalled = std::net::TcpStream::connect(&http).expect("HTTP connects");
    stalled
        .write_all(
            b"POST /person HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .unwrap();
    faulty.pause();

    let t0 = Instant::now();
    let status = svc.stop();
    let took = t0.elapsed();
    eprintln!("RELIABILITY stop with the broker silent and a stalled HTTP request: exited in {took:?} ({status})");
    assert!(status.success(), "{status}");
    // 1 s of shutdown timeout, then the closes: the consuming channel and
    // the connection (2 s each at most), the relay's link (5 s at most).
    assert!(took < Duration::from_secs(12), "the stop took {took:?}");
    let log = std::fs::read_to_string(t.path("person.log")).unwrap_or_default();
    assert!(
        log.contains("shutdown timeout"),
        "the log says what the stop gave up on:\n{log}"
    );
    drop(stalled);
}
