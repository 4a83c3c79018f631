struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    fn m(&self, x: i64) -> Result<i64, rpc_core::RpcError> {
        Ok(x)
    }
}

fn main() {}
