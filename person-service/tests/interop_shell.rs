//! `nameko shell` (Python nameko 2.14.1), with a script piped to its stdin,
//! calls every person method on the Rust person-service and gets nameko's
//! own exceptions back: RemoteError for the service's errors, the typed
//! MethodNotFound / IncorrectSignature for nameko's, and typed
//! PersonNotFound / ValidationError once the client registers classes
//! under the exc_paths person-service documents.

mod helpers;

use helpers::{python_dir, spawn_app};
use rpc_core::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use test_support::Cleanup;

/// The `JSON {...}` lines of a session, by label. Each may follow the
/// console's prompts on its line.
fn results(stdout: &str) -> HashMap<String, Value> {
    stdout
        .lines()
        .filter_map(|line| line.split_once("JSON ").map(|(_, json)| json))
        .map(|json| {
            let v: Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
            (v["label"].as_str().expect("a label").to_owned(), v)
        })
        .collect()
}

fn person(id: i64, first: &str, last: &str, age: i64, member: bool) -> Value {
    json!({"id": id, "first_name": first, "last_name": last, "age": age, "member": member})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameko_shell_calls_every_person_method() {
    let app = spawn_app().await;
    let script = std::fs::read_to_string(python_dir().join("shell_session.py"))
        .expect("read shell_session.py");
    let name = app.name.clone();
    let out = tokio::task::spawn_blocking(move || {
        test_support::nameko::shell(
            &test_support::broker_uri(),
            &script,
            &[
                ("PERSON_SERVICE", name.as_str()),
                // For `import person_service.exceptions`.
                ("PYTHONPATH", python_dir().to_str().expect("a UTF-8 path")),
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    let r = results(&out.stdout);
    // The shell's reply queue outlives it (x-expires 5 min): delete it.
    let _reply_queue = r
        .get("reply_queue")
        .and_then(|v| v["result"].as_str())
        .map(|q| Cleanup::new().queue(q));
    assert!(
        out.status.success() && r.contains_key("done"),
        "the shell session failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let result = |label: &str| -> &Value {
        let v = &r[label];
        assert!(v.get("result").is_some(), "{label}: {v}");
        &v["result"]
    };

    // create: positional, keyword, and both (with non-ASCII text).
    let ids: Vec<i64> = serde_json::from_value(result("ids").clone()).unwrap();
    let [ada, grace, zoe] = ids[..] else {
        panic!("three ids: {ids:?}")
    };
    assert!(ada < grace && grace < zoe, "{ids:?}");
    let ada_v = person(ada, "Ada", "Lovelace", 36, false);
    let grace_v = person(grace, "Grace", "Hopper", 85, true);
    let zoe_v = person(zoe, "Zoë", "Ñúñez 😀", 0, false);

    // get, positional and keyword.
    assert_eq!(result("get"), &ada_v);
    assert_eq!(result("get_keyword"), &grace_v);
    assert_eq!(result("get_unicode"), &zoe_v);

    // list, whole and in pages, keyword and positional.
    assert_eq!(
        result("list"),
        &json!([ada_v.clone(), grace_v.clone(), zoe_v.clone()])
    );
    assert_eq!(result("list_page_1"), &json!([ada_v, grace_v]));
    assert_eq!(result("list_page_2"), &json!([zoe_v]));
    assert_eq!(result("list_positional"), &json!([grace_v]));
    assert_eq!(result("list_after_last"), &json!([]));

    // update, then get sees it.
    let ada_37 = person(ada, "Ada", "Lovelace", 37, true);
    assert_eq!(result("update"), &ada_37);
    let amazing = person(grace, "Amazing Grace", "Hopper", 85, true);
    assert_eq!(result("update_name"), &amazing);
    assert_eq!(result("get_updated"), &ada_37);

    // delete returns None, and the person is gone.
    assert_eq!(result("delete"), &Value::Null);
    assert_eq!(result("list_after_delete"), &json!([ada_37, amazing]));

    // The service's errors: RemoteError carrying exc_type and value.
    let remote = |label: &str, exc_type: &str, value: &str| {
        let v = &r[label];
        assert_eq!(
            (&v["raised"], &v["module"], &v["exc_type"], &v["value"]),
            (
                &json!("RemoteError"),
                &json!("nameko.exceptions"),
                &json!(exc_type),
                &json!(value)
            ),
            "{label}: {v}"
        );
        assert_eq!(v["text"], json!(format!("{exc_type} {value}")), "{v}");
    };
    remote(
        "get_deleted",
        "PersonNotFound",
        &format!("no person with id {zoe}"),
    );
    remote(
        "delete_again",
        "PersonNotFound",
        &format!("no person with id {zoe}"),
    );
    remote(
        "get_missing",
        "PersonNotFound",
        "no person with id 987654321",
    );
    remote(
        "update_missing",
        "PersonNotFound",
        "no person with id 987654321",
    );
    // A ValidationError's value names the field first.
    remote(
        "create_empty_first_name",
        "ValidationError",
        "first_name: must not be empty",
    );
    remote(
        "create_age_out_of_range",
        "ValidationError",
        "age: must be between 0 and 150",
    );
    remote(
        "create_age_wrong_type",
        "ValidationError",
        "age: invalid type: string \"old\", expected an integer",
    );
    remote(
        "update_empty_last_name",
        "ValidationError",
        "last_name: must not be empty",
    );
    remote(
        "list_limit_zero",
        "ValidationError",
        "limit: must be between 1 and 10000",
    );

    // nameko's own errors arrive as its typed exceptions.
    let typed = |label: &str, class: &str, module: &str| -> Vec<String> {
        let v = &r[label];
        assert_eq!(
            (&v["raised"], &v["module"]),
            (&json!(class), &json!(module)),
            "{label}: {v}"
        );
        serde_json::from_value(v["args"].clone()).unwrap()
    };
    assert_eq!(
        typed("method_not_found", "MethodNotFound", "nameko.exceptions"),
        ["nosuch"]
    );
    let signature = |label: &str| typed(label, "IncorrectSignature", "nameko.exceptions");
    // The texts Python's getcallargs gives...
    assert_eq!(
        signature("signature_too_few"),
        ["get() missing 1 required positional argument: 'id'"]
    );
    assert_eq!(
        signature("signature_unknown_keyword"),
        ["get() got an unexpected keyword argument 'bogus'"]
    );
    assert_eq!(
        signature("signature_twice"),
        ["get() got multiple values for argument 'id'"]
    );
    assert_eq!(
        signature("signature_create_one"),
        ["create() missing 2 required positional arguments: 'last_name' and 'age'"]
    );
    // Counting `self`, word for word as a Python nameko service says it.
    assert_eq!(
        signature("signature_too_many"),
        ["get() takes 2 positional arguments but 3 were given"]
    );

    // Ten calls in flight at once on the shell's reply queue.
    assert_eq!(result("call_async"), &json!(vec![37; 10]));

    // With classes registered under person-service's exc_paths (see
    // person_service/exceptions.py), the errors are typed, args and all.
    assert_eq!(
        typed(
            "typed_not_found",
            "PersonNotFound",
            "person_service.exceptions"
        ),
        ["987654321"]
    );
    assert_eq!(
        typed(
            "typed_invalid",
            "ValidationError",
            "person_service.exceptions"
        ),
        ["first_name", "must not be empty"]
    );

    app.close().await;
}
