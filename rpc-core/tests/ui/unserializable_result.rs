struct S;
struct NotSerialize;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    async fn m(&self) -> Result<NotSerialize, rpc_core::RpcError> {
        Ok(NotSerialize)
    }
}

fn main() {}
