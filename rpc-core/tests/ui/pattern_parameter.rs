struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    async fn m(&self, (a, b): (i64, i64)) -> Result<i64, rpc_core::RpcError> {
        Ok(a + b)
    }
}

fn main() {}
