//! A model's `config.toml` (and the repository API's override): parsed and
//! checked into a typed config, or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kiln_core::config::ModelConfig::parse(text, std::path::Path::new("config.toml"));
    let _ = kiln_core::config::ModelConfig::parse_override(text);
});
