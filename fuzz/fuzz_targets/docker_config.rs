//! Docker config files (a push Secret's `.dockerconfigjson`) from any bytes: reading one never
//! panics, and looking a registry up in what was read never panics (no helper is run: helpers
//! come from the config, and the fuzzer's PATH has none of them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiarch_operator::publish::DockerConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = DockerConfig::from_bytes(data) else {
        return;
    };
    let config = config.with_helper_path("/nonexistent");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for registry in ["docker.io", "ghcr.io", "127.0.0.1:5000"] {
        let _ = runtime.block_on(config.lookup(registry));
    }
});
