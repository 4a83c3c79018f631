//! Misuse of `#[rpc_core::service]` is a compile error that points at the
//! offending tokens. Each file in `tests/ui` is one misuse; its `.stderr`
//! is what the user sees (refresh with `TRYBUILD=overwrite` after a
//! deliberate change of wording, and read the diff).

#[test]
fn misuse_is_a_compile_error_at_the_offending_tokens() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
