struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    async fn m(&self, x: i64) -> i64 {
        x
    }
}

fn main() {}
