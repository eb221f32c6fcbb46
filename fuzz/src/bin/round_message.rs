//! afl target: `sbtc_hsm_signer::fuzz_targets::round_message` (see docs/fuzzing.md).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = sbtc_hsm_signer::fuzz_targets::round_message(data);
    });
}
