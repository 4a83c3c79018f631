struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    async fn new(&self) -> Result<(), rpc_core::RpcError> {
        Ok(())
    }
}

fn main() {}
