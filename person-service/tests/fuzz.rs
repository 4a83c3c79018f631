//! Hostile input: 20,000 requests, most of them malformed in every way we
//! could think of, mixed with valid ones, against the person-service
//! binary. It must not crash or spin, must answer every request that has a
//! reply_to (an error where the request is bad), must ack the rest so the
//! queue drains, must keep its memory bounded, and must answer every valid
//! call correctly.

mod helpers;

use helpers::process::ProcessTest;
use helpers::raw::Raw;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rpc_core::{json, Args, Config, Value};
use std::collections::HashMap;
use std::time::Duration;
use test_support::raw::queue_depth;

/// splitmix64: a seeded generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What the reply to a message must be.
enum Expect {
    /// No reply (no reply_to).
    Nothing,
    /// Exactly this result.
    Result(Value),
    /// Any result that satisfies the check (e.g. an integer id).
    ResultLike(fn(&Value) -> bool),
    /// An error of one of these exc_types.
    Error(&'static [&'static str]),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_hostile_requests() {
    let t = ProcessTest::new(
        "person-fuzz",
        Config::new(&test_support::broker_uri()).unwrap(),
    )
    .await;
    let (name, proxy) = (&t.name, &t.proxy);
    let mut svc = t.start("log").await;
    let seeded = proxy
        .call(
            name,
            "create",
            Args::new().arg("Seed").arg("Person").arg(40),
        )
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    let seeded_record = json!({"id": seeded, "first_name": "Seed", "last_name": "Person", "age": 40, "member": false});

    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_u64);
    eprintln!("fuzz seed {seed} (set FUZZ_SEED to replay)");
    let mut rng = Rng(seed);
    let mut raw = Raw::connect().await;
    let total = 20_000;
    let mut expect: HashMap<String, Expect> = HashMap::new();
    let mut anonymous = 0usize;
    let mut categories: HashMap<String, u64> = HashMap::new();
    let mut valid = 0usize;
    const MALFORMED: &[&str] = &["MalformedRequest"];
    const REFUSED: &[&str] = &[
        "ValidationError",
        "IncorrectSignature",
        "MethodNotFound",
        "MalformedRequest",
    ];
    for i in 0..total {
        let corr = format!("f{i}");
        let rk_create = format!("{name}.create");
        let rk_get = format!("{name}.get");
        let category = rng.below(20);
        categories.insert(corr.clone(), category);
        let (rk, body, props, exp): (String, Vec<u8>, BasicProperties, Expect) = match category {
            0..=3 => {
                valid += 1;
                (
                    rk_get.clone(),
                    format!(r#"{{"args": [{seeded}], "kwargs": {{}}}}"#).into_bytes(),
                    raw.props(&corr),
                    Expect::Result(seeded_record.clone()),
                )
            }
            4 => {
                valid += 1;
                let body = json!({"args": ["Fuzz", format!("N{i}"), rng.below(151)], "kwargs": {"member": rng.below(2) == 1}});
                (
                    rk_create.clone(),
                    body.to_string().into_bytes(),
                    raw.props(&corr),
                    Expect::ResultLike(|v| v.is_i64()),
                )
            }
            5 => {
                let n = rng.below(2000) as usize;
                (
                    rk_get.clone(),
                    rng.bytes(n),
                    raw.props(&corr),
                    Expect::Error(MALFORMED),
                )
            }
            6 => {
                let ct = [
                    "text/plain",
                    "application/xml",
                    "application/x-python-serialize",
                    "",
                    "json",
                ][rng.below(5) as usize];
                (
                    rk_get.clone(),
                    format!(r#"{{"args": [{seeded}], "kwargs": {{}}}}"#).into_bytes(),
                    raw.props(&corr).with_content_type(ct.into()),
                    Expect::Error(MALFORMED),
                )
            }
            7 => {
                let body = [
                    "[1, 2]",
                    "42",
                    "\"text\"",
                    "null",
                    "true",
                    "{}",
                    r#"{"args": {}, "kwargs": []}"#,
                ][rng.below(7) as usize];
                (
                    rk_get.clone(),
                    body.as_bytes().to_vec(),
                    raw.props(&corr),
                    Expect::Error(MALFORMED),
                )
            }
            8 => {
                let depth = 50 + rng.below(20_000) as usize;
                let body = format!(
                    r#"{{"args": [{}{}], "kwargs": {{}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                // Up to serde's depth limit (128) it is valid JSON but a bad id.
                (
                    rk_get.clone(),
                    body.into_bytes(),
                    raw.props(&corr),
                    Expect::Error(&["MalformedRequest", "ValidationError"]),
                )
            }
            9 => {
                let long = "x".repeat(1000 + rng.below(200_000) as usize);
                let body = json!({"args": [long, "L", 1], "kwargs": {}});
                (
                    rk_create.clone(),
                    body.to_string().into_bytes(),
                    raw.props(&corr),
                    Expect::Error(&["ValidationError"]),
                )
            }
            10 => {
                let n = [
                    "1e400",
                    "-1e400",
                    "99999999999999999999999",
                    "1.5",
                    "-0",
                    "NaN",
                    "Infinity",
                ][rng.below(7) as usize];
                let body = format!(r#"{{"args": [{n}], "kwargs": {{}}}}"#);
                // -0 is a valid id that does not exist.
                (
                    rk_get.clone(),
                    body.into_bytes(),
                    raw.props(&corr),
                    Expect::Error(&["MalformedRequest", "ValidationError", "PersonNotFound"]),
                )
            }
            11 => {
                let mut body = br#"{"args": ["Ada", ""#.to_vec();
                body.extend_from_slice(&[0xff, 0xfe, 0x80]);
                body.extend_from_slice(br#"", 3], "kwargs": {}}"#);
                (
                    rk_create.clone(),
                    body,
                    raw.props(&corr),
                    Expect::Error(MALFORMED),
                )
            }
            12 => {
                let args = [
                    json!(["A", "B", "36"]),
                    json!(["A", "B", [1]]),
                    json!([1, 2, 3]),
                    json!(["A", "B", 3, "no"]),
                    json!([null, "B", 3]),
                ][rng.below(5) as usize]
                    .clone();
                (
                    rk_create.clone(),
                    json!({"args": args, "kwargs": {}}).to_string().into_bytes(),
                    raw.props(&corr),
                    Expect::Error(&["ValidationError"]),
                )
            }
            13 => {
                // No reply_to: valid or not, nothing comes back, but it is acked.
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_correlation_id(corr.as_str().into());
                let body = if rng.below(2) == 0 {
                    format!(r#"{{"args": [{seeded}], "kwargs": {{}}}}"#).into_bytes()
                } else {
                    rng.bytes(50)
                };
                (rk_get.clone(), body, props, Expect::Nothing)
            }
            14 => {
                anonymous += 1;
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_reply_to(raw.reply_key().into());
                (
                    rk_get.clone(),
                    format!(r#"{{"args": [{seeded}], "kwargs": {{}}}}"#).into_bytes(),
                    props,
                    Expect::Nothing,
                )
            }
            15 if rng.below(10) == 0 => {
                // Past the 1 MiB request limit.
                let body = format!(
                    r#"{{"args": ["{}", "L", 1], "kwargs": {{}}}}"#,
                    "y".repeat(1_100_000)
                );
                (
                    rk_create.clone(),
                    body.into_bytes(),
                    raw.props(&corr),
                    Expect::Error(MALFORMED),
                )
            }
            15 if rng.below(2) == 0 => {
                // Two words after the service: the binding `{name}.*` does
                // not match, so the broker drops it (nameko's clients publish
                // with mandatory and would get UnknownService instead).
                (
                    format!("{name}.create.extra"),
                    br#"{"args": [], "kwargs": {}}"#.to_vec(),
                    raw.props(&corr),
                    Expect::Nothing,
                )
            }
            15 | 16 => {
                let method = ["nosuch", "__init__", "", "list"][rng.below(4) as usize];
                let body = if method == "list" {
                    r#"{"args": [1, 2, 3], "kwargs": {}}"#
                } else {
                    r#"{"args": [], "kwargs": {}}"#
                };
                (
                    format!("{name}.{method}"),
                    body.as_bytes().to_vec(),
                    raw.props(&corr),
                    Expect::Error(REFUSED),
                )
            }
            17 => {
                let mut headers = FieldTable::default();
                headers.insert(
                    "nameko.call_id_stack".into(),
                    [
                        AMQPValue::LongInt(1),
                        AMQPValue::Boolean(true),
                        AMQPValue::Void,
                    ][rng.below(3) as usize]
                        .clone(),
                );
                headers.insert(
                    "nameko.user_id".into(),
                    AMQPValue::ByteArray(rng.bytes(20).into()),
                );
                headers.insert("x-junk".into(), AMQPValue::Double(-1.5e300));
                valid += 1;
                (
                    rk_get.clone(),
                    format!(r#"{{"args": [{seeded}], "kwargs": {{}}}}"#).into_bytes(),
                    raw.props(&corr).with_headers(headers),
                    Expect::Result(seeded_record.clone()),
                )
            }
            18 => (
                rk_get.clone(),
                format!(r#"{{"args": [], "kwargs": {{"id": {seeded}, "extra": 1}}}}"#).into_bytes(),
                raw.props(&corr),
                Expect::Error(&["IncorrectSignature"]),
            ),
            _ => (
                rk_get.clone(),
                format!(r#"{{"args": [{seeded}], "kwargs": {{}}}}"#).into_bytes(),
                raw.props(&corr).with_content_encoding("utf-16".into()),
                Expect::Error(MALFORMED),
            ),
        };
        if !matches!(exp, Expect::Nothing) {
            expect.insert(corr.clone(), exp);
        }
        raw.publish_nowait(&rk, &body, props).await;
        if i % 1000 == 999 {
            raw.wait_confirms().await;
        }
    }
    raw.wait_confirms().await;
    eprintln!("sent {total}: {valid} valid, {} expecting a reply by id, {anonymous} without correlation id", expect.len());

    // Every message with a reply_to is answered, correctly.
    let mut answered = 0usize;
    let mut anonymous_seen = 0usize;
    let wanted = expect.len() + anonymous;
    while answered + anonymous_seen < wanted {
        let Some(reply) = raw.reply_within(Duration::from_secs(30)).await else {
            let mut missing: Vec<&String> = expect.keys().collect();
            missing.sort();
            let mut by_category: HashMap<u64, usize> = HashMap::new();
            for m in &missing {
                *by_category.entry(categories[*m]).or_default() += 1;
            }
            panic!("only {answered} + {anonymous_seen} of {wanted} replies; missing by category {by_category:?}, e.g. {:?}", &missing[..missing.len().min(5)]);
        };
        let Some(corr) = reply.correlation_id else {
            assert_eq!(reply.body.unwrap(), seeded_record);
            anonymous_seen += 1;
            continue;
        };
        let exp = expect
            .remove(&corr)
            .unwrap_or_else(|| panic!("unexpected or duplicate reply {corr}"));
        match (exp, reply.body) {
            (Expect::Result(want), Ok(got)) => assert_eq!(got, want, "{corr}"),
            (Expect::ResultLike(check), Ok(got)) => assert!(check(&got), "{corr}: {got}"),
            (Expect::Error(types), Err(e)) => assert!(
                types.contains(&e.exc_type.as_str()),
                "{corr}: {e:?} not in {types:?}"
            ),
            (_, other) => panic!("{corr}: unexpected {other:?}"),
        }
        answered += 1;
    }
    assert!(
        raw.reply_within(Duration::from_millis(500)).await.is_none(),
        "a reply nobody asked for"
    );

    // The queue drained, the service is alive and idle (not spinning), and
    // its memory stayed bounded by the prefetch, not by what was sent.
    assert_eq!(queue_depth(&format!("rpc-{name}")).await, 0);
    assert!(svc.is_running(), "person-service died");
    let cpu_before = svc.cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_cpu = svc.cpu() - cpu_before;
    let peak_mib = svc.peak_rss_kib() / 1024;
    eprintln!("service peak RSS {peak_mib} MiB, CPU while idle {idle_cpu:?}");
    assert!(
        idle_cpu < Duration::from_millis(200),
        "busy while idle: {idle_cpu:?}"
    );
    assert!(peak_mib < 128, "peak RSS {peak_mib} MiB");
    assert_eq!(
        proxy
            .call(name, "get", Args::new().arg(seeded))
            .await
            .unwrap(),
        seeded_record
    );

    raw.close().await;
    proxy.close().await;
    assert!(svc.stop().success());
}
