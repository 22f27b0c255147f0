//! Generates the gRPC wire contract from `proto/` with protox (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: [&str; 2] = [
        "npd/external/v1/external_monitor.proto",
        "npd/external/v1/external_exporter.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Unimplemented methods answer UNIMPLEMENTED, as peers built against
        // the Go proof of concept do for WatchHealth.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
