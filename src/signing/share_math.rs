//! The arithmetic of one signature share and of the aggregate nonce: WSTS v2's (BIP-340 with
//! the BIP-341 tweak for key spends), with the per-batch caches that make a batch cheap.

use bitcoin::{
    hashes::Hash as _,
    key::{TapTweak as _, UntweakedPublicKey},
    TapNodeHash,
};
use wsts::{
    common::{Nonce, PublicNonce},
    compute,
    curve::{point::Point, scalar::Scalar},
};

use super::{round::SpendKind, secret::wipe_scalar, shares::KeyShares};

/// The scalar tweak WSTS expects: BIP-341 TapTweak for key spends, zero (x-only key, no tweak)
/// for script-path spends.
pub(crate) fn tweak_for(aggregate_key: &Point, kind: SpendKind) -> Scalar {
    match kind {
        SpendKind::KeySpend { merkle_root } => compute::tweak(aggregate_key, merkle_root),
        SpendKind::ScriptPath => Scalar::from(0u32),
    }
}

/// One signer's share z = ±(d + rho * e) + sign * c * x, where x is the Lagrange-weighted key:
/// WSTS v2's `Party::sign_with_tweak` with the nonce math of [`message_nonces`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn signature_share(
    nonce: &Nonce,
    x: Scalar,
    tweaked: Point,
    cx_sign: Scalar,
    my_pos: usize,
    msg: &[u8; 32],
    party_ids: &[u32],
    nonces: &[PublicNonce],
) -> Scalar {
    let (rhos, big_r) = message_nonces(msg, party_ids, nonces);
    let c = compute::challenge(&tweaked, &big_r, msg);
    let mut r = nonce.d + nonce.e * rhos[my_pos];
    if !big_r.has_even_y() {
        r = -r;
    }
    let z = r + cx_sign * (c * x);
    wipe_scalar(&mut r);
    z
}

/// Sum over this signer's keys of `private key * Lagrange coefficient` for one participant set.
/// Wiped on drop.
pub(crate) struct WeightedKey(pub(crate) Scalar);

impl WeightedKey {
    pub(crate) fn new(keys: &KeyShares, party_ids: &[u32]) -> Self {
        let key_ids: Vec<u32> = party_ids.iter().map(|p| p + 1).collect();
        let mut x = Scalar::from(0u32);
        for (key_id, sk) in keys.private_keys() {
            x += *sk * compute::lambda(*key_id, &key_ids);
        }
        WeightedKey(x)
    }
}

impl Drop for WeightedKey {
    fn drop(&mut self) {
        wipe_scalar(&mut self.0);
    }
}

/// The key each spend kind signs under, with WSTS' sign flip for the private key: BIP-340 uses
/// even-y keys, so the shares are negated when exactly one of internal and tweaked key is odd
/// (key spends), or when the untweaked key is odd (script paths). This is `v2::Party::
/// sign_with_tweak`'s rule.
pub(crate) struct TweakCache {
    group_key: Point,
    entries: Vec<(SpendKind, Point, Scalar)>,
}

impl TweakCache {
    pub(crate) fn new(group_key: Point) -> Self {
        TweakCache {
            group_key,
            entries: Vec::new(),
        }
    }

    pub(crate) fn get(&mut self, kind: SpendKind) -> (Point, Scalar) {
        if let Some((_, p, s)) = self.entries.iter().find(|(k, _, _)| *k == kind) {
            return (*p, *s);
        }
        let one = Scalar::from(1u32);
        let tweak = tweak_for(&self.group_key, kind);
        let (key, flip) = if tweak != Scalar::from(0u32) {
            let key = compute::tweaked_public_key_from_tweak(&self.group_key, tweak);
            (key, key.has_even_y() ^ self.group_key.has_even_y())
        } else {
            (self.group_key, !self.group_key.has_even_y())
        };
        let sign = if flip { -one } else { one };
        self.entries.push((kind, key, sign));
        (key, sign)
    }
}

/// The binding factors of every participant and the aggregate nonce R for one message, as WSTS
/// defines them (`compute::binding`, `compute::intermediate`), computed with each nonce compressed
/// once (WSTS recompresses all of them for every participant) and R = sum(D) + multiexp(rho, E).
#[allow(non_snake_case)]
pub(crate) fn message_nonces(
    msg: &[u8],
    party_ids: &[u32],
    nonces: &[PublicNonce],
) -> (Vec<Scalar>, Point) {
    let compressed: Vec<_> = nonces
        .iter()
        .map(|n| (n.D.compress(), n.E.compress()))
        .collect();
    let rhos: Vec<Scalar> = party_ids
        .iter()
        .map(|&i| compute::binding_compressed(&compute::id(i), &compressed, msg))
        .collect();
    let sum_d: Point = nonces.iter().map(|n| n.D).sum();
    let es: Vec<Point> = nonces.iter().map(|n| n.E).collect();
    let R = match Point::multimult(rhos.clone(), es) {
        Ok(e) => sum_d + e,
        // Only fails on an empty input; the plain sum cannot fail.
        Err(_) => compute::intermediate(msg, party_ids, nonces).1,
    };
    (rhos, R)
}

/// The key a signature for `kind` must verify under.
pub fn signing_key(
    aggregate_key: &secp256k1::PublicKey,
    kind: SpendKind,
) -> secp256k1::XOnlyPublicKey {
    let (internal, _) = aggregate_key.x_only_public_key();
    match kind {
        SpendKind::ScriptPath => internal,
        SpendKind::KeySpend { merkle_root } => {
            let secp = secp256k1::Secp256k1::verification_only();
            let untweaked: UntweakedPublicKey = internal;
            let root = merkle_root.map(TapNodeHash::from_byte_array);
            untweaked.tap_tweak(&secp, root).0.to_x_only_public_key()
        }
    }
}

#[cfg(test)]
mod tests {
    use wsts::traits::Signer as _;

    use super::*;
    use crate::signing::DkgId;

    /// Our share arithmetic gives exactly WSTS v2's shares, for key spends and script paths.
    #[test]
    fn shares_equal_wsts_v2_party_shares() {
        let (n, t) = (4u32, 3u32);
        let mut rng = rand::rngs::OsRng;
        let mut parties: Vec<wsts::v2::Party> = (0..n)
            .map(|i| wsts::v2::Party::new(i, &[i + 1], n, n, t, &mut rng))
            .collect();
        wsts::traits::test_helpers::dkg(&mut parties, &mut rng).expect("dkg");
        let party_ids: Vec<u32> = (0..n).collect();
        let key_ids: Vec<u32> = (1..=n).collect();
        for kind in [
            SpendKind::KeySpend { merkle_root: None },
            SpendKind::KeySpend {
                merkle_root: Some([9u8; 32]),
            },
            SpendKind::ScriptPath,
        ] {
            let msg = [0x42u8; 32];
            let nonces: Vec<PublicNonce> = parties
                .iter_mut()
                .flat_map(|p| p.gen_nonces(&mut rng))
                .collect();
            for (i, p) in parties.iter().enumerate() {
                let expected = match kind {
                    SpendKind::KeySpend { merkle_root } => {
                        p.sign_taproot(&msg, &party_ids, &key_ids, &nonces, merkle_root)
                    }
                    SpendKind::ScriptPath => p.sign_schnorr(&msg, &party_ids, &key_ids, &nonces),
                };
                let state = p.save();
                let keys = KeyShares::new(
                    DkgId(1),
                    i as u32,
                    state.group_key,
                    state.parties[0].1.private_keys.clone(),
                );
                let nonce = state.parties[0].1.nonce.clone();
                let x = WeightedKey::new(&keys, &party_ids);
                let (tweaked, sign) = TweakCache::new(state.group_key).get(kind);
                let ours =
                    signature_share(&nonce, x.0, tweaked, sign, i, &msg, &party_ids, &nonces);
                assert_eq!(ours, expected[0].z_i, "party {i}, {kind:?}");
            }
        }
    }
}
