//! The signers' Stacks account (an order-independent m-of-n multisig, SIP-027) and signing for
//! it in custody: each signer signs the transaction's presign sighash with its identity key
//! through [`Keys::sign_identity`], so the key never leaves the HSM; the coordinator gathers the
//! signatures and [`SignerAccount::assemble`]s the transaction, checking every one.

use bitcoin::secp256k1::PublicKey;

use super::address::{
    Principal, StacksNetwork, VERSION_MAINNET_MULTISIG, VERSION_TESTNET_MULTISIG,
};
use super::transaction::{
    multisig_signer_hash, recover, AuthField, ContractCall, MultisigCondition, OriginError,
    Payload, PostConditionMode, SpendingCondition, StacksTransaction, ANCHOR_ANY,
};
use crate::keys::Keys;

/// The most keys the sbtc-bootstrap-signers contract accepts in a signer set.
pub const MAX_SIGNERS: usize = 128;

/// The signers' Stacks account: the signer set sorted by its 33-byte keys (the order of the keys
/// in the multisig redeem script) and the signature threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerAccount {
    keys: Vec<PublicKey>,
    threshold: u16,
}

/// Why a signer set and threshold are not a Stacks multisig account.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("a signer set of {keys} keys needs a threshold m with {keys}/2 < m ≤ {keys} (got {threshold})")]
    Threshold { keys: usize, threshold: u16 },
    #[error("a signer set holds 1 to {MAX_SIGNERS} keys (got {0})")]
    Size(usize),
    #[error("key {0} appears twice in the signer set")]
    Duplicate(String),
}

/// Why signatures did not make a signed transaction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("the transaction is not from this signer set's multisig account")]
    NotOurAccount,
    #[error("{got} valid signatures of the {threshold} needed; refused: {}", refused_text(.refused))]
    TooFew {
        got: usize,
        threshold: u16,
        refused: Vec<RefusedSignature>,
    },
}

/// A signature [`SignerAccount::assemble`] left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedSignature {
    /// Its position in what was handed in.
    pub index: usize,
    pub reason: String,
}

fn refused_text(r: &[RefusedSignature]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    r.iter()
        .map(|s| format!("#{} ({})", s.index, s.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why this signer could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("custody could not sign: {0}")]
    Custody(#[from] sbtc_custody::Error),
    #[error("this signer's identity key is not in the transaction's signer set")]
    NotASigner,
    #[error("custody returned a signature that does not recover to this signer's identity key ({0}); check the identity key label")]
    WrongKey(String),
}

impl SignerAccount {
    /// The account of `keys` (any order; sorted here) with threshold `threshold`, under the
    /// contracts' rule n/2 < m ≤ n.
    pub fn new(mut keys: Vec<PublicKey>, threshold: u16) -> Result<SignerAccount, AccountError> {
        if keys.is_empty() || keys.len() > MAX_SIGNERS {
            return Err(AccountError::Size(keys.len()));
        }
        keys.sort_by_key(|k| k.serialize());
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(AccountError::Duplicate(w[0].to_string()));
        }
        let n = keys.len();
        let m = threshold as usize;
        if m == 0 || m > n || m * 2 <= n {
            return Err(AccountError::Threshold { keys: n, threshold });
        }
        Ok(SignerAccount { keys, threshold })
    }

    /// The keys, in redeem-script order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// hash160 of the multisig redeem script: the spending condition's signer field.
    pub fn signer_hash(&self) -> [u8; 20] {
        multisig_signer_hash(&self.keys, self.threshold)
    }

    /// The account's principal (`SM…` on mainnet, `SN…` on testnet).
    pub fn principal(&self, network: StacksNetwork) -> Principal {
        let version = match network {
            StacksNetwork::Mainnet => VERSION_MAINNET_MULTISIG,
            StacksNetwork::Testnet => VERSION_TESTNET_MULTISIG,
        };
        Principal::Standard {
            version,
            hash160: self.signer_hash(),
        }
    }

    /// An unsigned contract call from this account: what the coordinator proposes and every
    /// signer rebuilds.
    pub fn unsigned_call(
        &self,
        network: StacksNetwork,
        nonce: u64,
        fee: u64,
        call: ContractCall,
    ) -> StacksTransaction {
        self.unsigned(network, nonce, fee, Payload::ContractCall(call))
    }

    /// An unsigned transaction from this account (a contract call, or a deploy from a devnet
    /// whose deployer is the bootstrap signers' account).
    pub fn unsigned(
        &self,
        network: StacksNetwork,
        nonce: u64,
        fee: u64,
        payload: Payload,
    ) -> StacksTransaction {
        StacksTransaction {
            network,
            auth: SpendingCondition::Multisig(MultisigCondition {
                signer: self.signer_hash(),
                nonce,
                fee,
                fields: Vec::new(),
                signatures_required: self.threshold,
            }),
            anchor_mode: ANCHOR_ANY,
            post_condition_mode: PostConditionMode::Allow,
            post_conditions: Vec::new(),
            payload,
        }
    }

    /// Puts signatures into `tx`: each must recover, over the presign sighash, to a key of this
    /// set not already counted. The first `threshold` valid ones are used (more would only
    /// make the transaction larger); the rest of the set goes in as public keys. Signatures
    /// that do not count are reported, never silently dropped, when too few remain.
    pub fn assemble(
        &self,
        tx: &StacksTransaction,
        signatures: &[[u8; 65]],
    ) -> Result<StacksTransaction, AssembleError> {
        let ours = tx.multisig().is_some_and(|m| {
            m.signer == self.signer_hash() && m.signatures_required == self.threshold
        });
        if !ours {
            return Err(AssembleError::NotOurAccount);
        }
        let digest = tx.presign_sighash();
        let mut chosen: Vec<Option<[u8; 65]>> = vec![None; self.keys.len()];
        let mut got = 0usize;
        let mut refused = Vec::new();
        for (index, sig) in signatures.iter().enumerate() {
            if got == self.threshold as usize {
                break;
            }
            let key = match recover(&digest, sig, index) {
                Ok(k) => k,
                Err(e) => {
                    refused.push(RefusedSignature {
                        index,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            match self.keys.iter().position(|k| *k == key) {
                None => refused.push(RefusedSignature {
                    index,
                    reason: format!(
                        "made by {key}, which is not in the signer set (or signed another digest)"
                    ),
                }),
                Some(i) if chosen[i].is_some() => refused.push(RefusedSignature {
                    index,
                    reason: format!("a second signature of {key}"),
                }),
                Some(i) => {
                    chosen[i] = Some(*sig);
                    got += 1;
                }
            }
        }
        if got < self.threshold as usize {
            return Err(AssembleError::TooFew {
                got,
                threshold: self.threshold,
                refused,
            });
        }
        let mut signed = tx.clone();
        let Some(cond) = signed.multisig_mut() else {
            return Err(AssembleError::NotOurAccount);
        };
        cond.fields = self
            .keys
            .iter()
            .zip(chosen)
            .map(|(k, s)| match s {
                Some(sig) => AuthField::Signature(sig),
                None => AuthField::PublicKey(*k),
            })
            .collect();
        Ok(signed)
    }

    /// Checks a signed transaction as the Stacks node will: its signatures authorize it, and
    /// the keys are exactly this set.
    pub fn verify(&self, tx: &StacksTransaction) -> Result<(), OriginError> {
        let origin = tx.verify_origin()?;
        if origin.keys != self.keys {
            return Err(OriginError::SignerHashMismatch);
        }
        Ok(())
    }
}

/// This signer's signature for `tx`: the presign sighash signed with the identity key in
/// custody (recorded in the audit log under `reason`), checked to recover to `identity` (the
/// identity key, read once by the caller) before it leaves. `v || r || s`, low-S.
pub async fn sign(
    keys: &Keys,
    identity: &PublicKey,
    account: &SignerAccount,
    tx: &StacksTransaction,
    reason: &str,
) -> Result<[u8; 65], SignError> {
    if !account.keys().contains(identity) {
        return Err(SignError::NotASigner);
    }
    let digest = tx.presign_sighash();
    let sig = keys.sign_identity(&digest, reason).await?.to_vrs();
    match recover(&digest, &sig, 0) {
        Ok(k) if k == *identity => Ok(sig),
        Ok(k) => Err(SignError::WrongKey(k.to_string())),
        Err(e) => Err(SignError::WrongKey(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};

    fn secrets(n: u8) -> Vec<SecretKey> {
        (1..=n)
            .map(|i| SecretKey::from_slice(&[i; 32]).unwrap())
            .collect()
    }

    fn vrs(digest: [u8; 32], s: &SecretKey) -> [u8; 65] {
        let sig = Secp256k1::new().sign_ecdsa_recoverable(&Message::from_digest(digest), s);
        sbtc_custody::RecoverableSignature::from_secp256k1(&sig).to_vrs()
    }

    fn call() -> ContractCall {
        ContractCall {
            address_version: 26,
            address_hash: [1; 20],
            contract_name: "sbtc-withdrawal".into(),
            function_name: "reject-withdrawal-request".into(),
            args: vec![],
        }
    }

    #[test]
    fn thresholds_follow_the_contracts_rule() {
        let secp = Secp256k1::new();
        let keys: Vec<_> = secrets(4).iter().map(|s| s.public_key(&secp)).collect();
        assert!(SignerAccount::new(keys.clone(), 3).is_ok());
        for bad in [0, 2, 5] {
            assert_eq!(
                SignerAccount::new(keys.clone(), bad),
                Err(AccountError::Threshold {
                    keys: 4,
                    threshold: bad
                })
            );
        }
        let mut twice = keys.clone();
        twice.push(keys[0]);
        assert!(matches!(
            SignerAccount::new(twice, 3),
            Err(AccountError::Duplicate(_))
        ));
    }

    #[test]
    fn assembly_takes_the_threshold_of_valid_signatures_and_names_the_rest() {
        let secp = Secp256k1::new();
        let s = secrets(5);
        let keys: Vec<_> = s.iter().map(|k| k.public_key(&secp)).collect();
        let account = SignerAccount::new(keys, 3).unwrap();
        let tx = account.unsigned_call(StacksNetwork::Testnet, 4, 1_000, call());
        let d = tx.presign_sighash();
        let outsider = SecretKey::from_slice(&[9; 32]).unwrap();
        let mut wrong = d;
        wrong[0] ^= 1;
        let sigs = [
            vrs(d, &s[4]),
            vrs(d, &outsider),
            vrs(wrong, &s[0]),
            vrs(d, &s[4]),
            vrs(d, &s[1]),
        ];
        match account.assemble(&tx, &sigs) {
            Err(AssembleError::TooFew {
                got: 2, refused, ..
            }) => {
                assert_eq!(
                    refused.iter().map(|r| r.index).collect::<Vec<_>>(),
                    [1, 2, 3]
                );
            }
            other => panic!("{other:?}"),
        }
        let mut more = sigs.to_vec();
        more.push(vrs(d, &s[2]));
        more.push(vrs(d, &s[3]));
        let signed = account.assemble(&tx, &more).unwrap();
        account.verify(&signed).unwrap();
        let fields = &signed.multisig().unwrap().fields;
        let n_sigs = fields
            .iter()
            .filter(|f| matches!(f, AuthField::Signature(_)))
            .count();
        assert_eq!(n_sigs, 3, "exactly the threshold is used");
        let other =
            SignerAccount::new(s[..3].iter().map(|k| k.public_key(&secp)).collect(), 2).unwrap();
        assert_eq!(
            other.assemble(&tx, &more),
            Err(AssembleError::NotOurAccount)
        );
    }
}
