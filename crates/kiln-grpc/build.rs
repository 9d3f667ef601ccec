// Compiles proto/*.proto with protox (pure Rust): no `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let fds = protox::compile(["grpc_service.proto"], [&proto_dir])?;
    // What server reflection tells grpcurl about the V2 service.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("inference_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Checks an inference request's entry counts before prost decodes it.
        .codec_path("crate::codec::KilnCodec")
        // Hand-written: BYTES contents decode flat (see src/contents.rs).
        .extern_path(
            ".inference.InferTensorContents",
            "crate::contents::InferTensorContents",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    Ok(())
}
