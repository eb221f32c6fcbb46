//! Generates the peer-link gRPC code (src/peer) from proto/peer.proto with tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/peer.proto");
    tonic_prost_build::configure()
        // Payloads become `Bytes`: a broadcast encodes an envelope once and shares it.
        .bytes(".")
        .build_transport(false)
        .compile_protos(&["proto/peer.proto"], &["proto"])?;
    Ok(())
}
