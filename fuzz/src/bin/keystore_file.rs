//! afl target: `sbtc_hsm_signer::fuzz_targets::keystore_file` (see docs/fuzzing.md).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = sbtc_hsm_signer::fuzz_targets::keystore_file(data);
    });
}
