struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    async fn m(&self, a: &rpc_core::Context, b: &rpc_core::Context) -> Result<(), rpc_core::RpcError> {
        let _ = (a, b);
        Ok(())
    }
}

fn main() {}
