//! afl target: `sbtc_hsm_signer::fuzz_targets::stacks_transaction` (see docs/fuzzing.md).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = sbtc_hsm_signer::fuzz_targets::stacks_transaction(data);
    });
}
