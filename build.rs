//! Generates the peer-link gRPC code (src/peer) from proto/peer.proto with tonic, and the round
//! messages it carries from proto/rounds.proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/peer.proto");
    println!("cargo:rerun-if-changed=proto/rounds.proto");
    // Payloads become `Bytes`: a broadcast encodes an envelope once and shares it, and a received
    // envelope's packed fields are slices of the frame, not copies.
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(false)
        .build_server(false)
        .build_transport(false)
        .compile_protos(&["proto/rounds.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".sbtc.rounds.v1", "crate::peer::proto::rounds")
        .build_transport(false)
        .compile_protos(&["proto/peer.proto"], &["proto"])?;
    Ok(())
}
