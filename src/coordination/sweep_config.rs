//! `[sweep]`: how this signer builds and judges sweeps (CHAIN.md section 2). Every setting has a
//! default; the section may be left out.

use bitcoin::{FeeRate, Network};
use serde::Deserialize;

/// `[sweep]` in the signer's config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// The two ASCII bytes that start a sweep's OP_RETURN. Default: `X2` on mainnet, `T3`
    /// elsewhere (the official signer's values). Every signer of a set must use the same.
    pub magic: Option<String>,
    /// The `estimatesmartfee` target in blocks. Default 1 (the sweep should confirm in the next
    /// block).
    pub conf_target: Option<u16>,
    /// A coordinator's fee rate is accepted within this factor of this signer's own estimate
    /// (both ways). Default 2.0.
    pub fee_rate_band: Option<f64>,
    /// Fee rates are clamped to this range, in sat/vB. Defaults 1 and 500.
    pub min_fee_rate_sat_vb: Option<u64>,
    pub max_fee_rate_sat_vb: Option<u64>,
    /// A sweep that has not confirmed after this many blocks is replaced (BIP-125). Default 3.
    pub replace_after_blocks: Option<u32>,
}

/// `[sweep]` resolved for a network.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSettings {
    pub network: Network,
    pub magic: [u8; 2],
    pub conf_target: u16,
    pub fee_rate_band: f64,
    pub min_fee_rate: FeeRate,
    pub max_fee_rate: FeeRate,
    pub replace_after_blocks: u32,
}

impl SweepConfig {
    pub fn resolve(&self, network: Network) -> Result<SweepSettings, String> {
        let magic = match &self.magic {
            Some(m) => {
                let bytes = m.as_bytes();
                if bytes.len() != 2 || !m.is_ascii() {
                    return Err(format!(
                        "[sweep] magic = {m:?} must be exactly two ASCII characters, e.g. \"T3\""
                    ));
                }
                [bytes[0], bytes[1]]
            }
            None if network == Network::Bitcoin => *b"X2",
            None => *b"T3",
        };
        let band = self.fee_rate_band.unwrap_or(2.0);
        if !band.is_finite() || !(1.0..=100.0).contains(&band) {
            return Err(format!(
                "[sweep] fee_rate_band = {band} must be between 1.0 and 100.0 (2.0 accepts half to twice this signer's estimate)"
            ));
        }
        let min = self.min_fee_rate_sat_vb.unwrap_or(1);
        let max = self.max_fee_rate_sat_vb.unwrap_or(500);
        if min == 0 || min > max {
            return Err(format!(
                "[sweep] needs 1 <= min_fee_rate_sat_vb ({min}) <= max_fee_rate_sat_vb ({max})"
            ));
        }
        let (Some(min_fee_rate), Some(max_fee_rate)) =
            (FeeRate::from_sat_per_vb(min), FeeRate::from_sat_per_vb(max))
        else {
            return Err(format!(
                "[sweep] fee rates {min}..{max} sat/vB are out of range"
            ));
        };
        let replace_after_blocks = self.replace_after_blocks.unwrap_or(3);
        if replace_after_blocks == 0 {
            return Err("[sweep] replace_after_blocks must be at least 1".into());
        }
        Ok(SweepSettings {
            network,
            magic,
            conf_target: self.conf_target.unwrap_or(1).max(1),
            fee_rate_band: band,
            min_fee_rate,
            max_fee_rate,
            replace_after_blocks,
        })
    }
}

impl SweepSettings {
    /// Clamps an estimate to the configured range.
    pub fn clamp(&self, rate: FeeRate) -> FeeRate {
        rate.clamp(self.min_fee_rate, self.max_fee_rate)
    }

    /// Whether a coordinator's `proposed` rate is within the band around `own`.
    pub fn check_fee_rate(&self, own: FeeRate, proposed: FeeRate) -> Result<(), String> {
        let own_kwu = own.to_sat_per_kwu() as f64;
        let proposed_kwu = proposed.to_sat_per_kwu() as f64;
        if proposed < self.min_fee_rate || proposed > self.max_fee_rate {
            return Err(format!(
                "the fee rate {} sat/kwu is outside this signer's range {}..{} sat/kwu",
                proposed.to_sat_per_kwu(),
                self.min_fee_rate.to_sat_per_kwu(),
                self.max_fee_rate.to_sat_per_kwu()
            ));
        }
        if proposed_kwu > own_kwu * self.fee_rate_band
            || proposed_kwu * self.fee_rate_band < own_kwu
        {
            return Err(format!(
                "the fee rate {} sat/kwu is not within {}x of this signer's estimate {} sat/kwu",
                proposed.to_sat_per_kwu(),
                self.fee_rate_band,
                own.to_sat_per_kwu()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SweepSettings {
        SweepConfig::default().resolve(Network::Regtest).unwrap()
    }

    #[test]
    fn defaults_follow_the_network() {
        assert_eq!(settings().magic, *b"T3");
        let main = SweepConfig::default().resolve(Network::Bitcoin).unwrap();
        assert_eq!(main.magic, *b"X2");
    }

    #[test]
    fn bad_values_are_named() {
        let bad = SweepConfig {
            magic: Some("T33".into()),
            ..SweepConfig::default()
        };
        assert!(bad.resolve(Network::Regtest).unwrap_err().contains("magic"));
        let bad = SweepConfig {
            min_fee_rate_sat_vb: Some(10),
            max_fee_rate_sat_vb: Some(5),
            ..SweepConfig::default()
        };
        assert!(bad
            .resolve(Network::Regtest)
            .unwrap_err()
            .contains("min_fee_rate_sat_vb"));
    }

    #[test]
    fn the_band_refuses_rates_far_from_the_own_estimate() {
        let s = settings();
        let own = FeeRate::from_sat_per_vb(10).unwrap();
        assert!(s.check_fee_rate(own, own).is_ok());
        assert!(s
            .check_fee_rate(own, FeeRate::from_sat_per_vb(20).unwrap())
            .is_ok());
        let high = s
            .check_fee_rate(own, FeeRate::from_sat_per_vb(21).unwrap())
            .unwrap_err();
        assert!(high.contains("not within 2x"), "{high}");
        assert!(s
            .check_fee_rate(own, FeeRate::from_sat_per_vb(4).unwrap())
            .is_err());
        assert!(s
            .check_fee_rate(own, FeeRate::from_sat_per_vb(501).unwrap())
            .unwrap_err()
            .contains("outside"));
    }
}
