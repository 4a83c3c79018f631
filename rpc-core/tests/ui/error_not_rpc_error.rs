struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[rpc]
    async fn m(&self) -> Result<i64, std::io::Error> {
        Ok(1)
    }
}

fn main() {}
