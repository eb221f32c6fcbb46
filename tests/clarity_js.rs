//! Clarity values against `@stacks/transactions` 7 (installed by the test command's `npm ci`):
//! what we serialize, the library decodes to the same bytes and notation; what the library
//! serializes, we decode and serialize back byte for byte.

mod npm_support;

use sbtc_hsm_signer::chain::stacks::{address::Principal, clarity::Value};

fn library(decode: &[String]) -> serde_json::Value {
    npm_support::run("clarity.mjs", &serde_json::json!({ "decode": decode }))
}

#[test]
fn the_wallet_library_reads_what_we_write_and_we_read_what_it_writes() {
    let registry =
        Principal::from_address("SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4.sbtc-registry").unwrap();
    let ours = vec![
        Value::UInt(0),
        Value::UInt(u128::MAX),
        Value::Int(i128::MIN),
        Value::Bool(true),
        Value::Buffer(vec![0xab; 65]),
        Value::Principal(registry.clone()),
        Value::tuple([
            ("amount", Value::UInt(50_000)),
            ("recipient", Value::Principal(registry)),
            ("bitcoin-txid", Value::Buffer(vec![7; 32])),
        ]),
        Value::List(vec![Value::some(Value::None), Value::err(Value::UInt(3))]),
        Value::StringAscii("withdrawal-create".into()),
        Value::StringUtf8("sBTC \u{20bf}".into()),
    ];
    let hexes: Vec<String> = ours.iter().map(|v| hex::encode(v.serialize())).collect();
    let answer = library(&hexes);
    for (i, v) in ours.iter().enumerate() {
        let d = &answer["decoded"][i];
        assert_eq!(
            d["hex"], hexes[i],
            "the library re-serializes {v} differently"
        );
        assert_eq!(d["text"], v.to_string(), "notation of value {i}");
    }
    let built = answer["built"].as_array().unwrap();
    assert_eq!(built.len(), 10);
    for b in built {
        let hex = b["hex"].as_str().unwrap();
        let v = Value::from_hex(hex).unwrap_or_else(|e| panic!("{hex}: {e}"));
        assert_eq!(hex::encode(v.serialize()), hex, "{v}");
        assert_eq!(b["text"], v.to_string());
    }
}
