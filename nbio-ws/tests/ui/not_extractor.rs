use nbio_ws::{rpc_method, Client, Params};

struct Config {
    verbose: bool,
}

#[rpc_method("not.extractor")]
fn not_extractor(client: Client, config: Config, Params(n): Params<u32>) -> u32 {
    let _ = (client, config.verbose);
    n
}

#[rpc_method("not.extractor.async")]
async fn not_extractor_async(text: String) -> usize {
    text.len()
}

fn main() {}
