struct S;

#[rpc_core::service(name = "s")]
impl S {
    #[timer(interval = 0)]
    async fn tick(&self) -> Result<(), String> {
        Ok(())
    }

    #[timer(interval = 5)]
    async fn tock(&self, n: i64) -> Result<(), String> {
        let _ = n;
        Ok(())
    }
}

fn main() {}
