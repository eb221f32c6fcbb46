//! The node's own wallet, for funding devnet depositors: keys in memory only (a devnet
//! convenience; they die with the node), bech32 P2WPKH or bech32m P2TR (key path) addresses,
//! and signing of the wallet's own inputs.

use std::collections::HashMap;

use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{Address, CompressedPublicKey, Network, ScriptBuf, Transaction, TxOut, Witness};

/// The address kinds `getnewaddress` hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    /// `bech32`: P2WPKH (the default, as in bitcoind).
    P2wpkh,
    /// `bech32m`: P2TR, key path only.
    P2tr,
}

impl AddressKind {
    /// bitcoind's `address_type` names.
    pub fn parse(name: &str) -> Option<AddressKind> {
        match name {
            "bech32" => Some(AddressKind::P2wpkh),
            "bech32m" => Some(AddressKind::P2tr),
            _ => None,
        }
    }
}

enum Key {
    P2wpkh(SecretKey, CompressedPublicKey),
    P2tr(Keypair),
}

pub struct Wallet {
    secp: Secp256k1<All>,
    keys: HashMap<ScriptBuf, Key>,
    /// Scripts in creation order, for stable listings.
    order: Vec<ScriptBuf>,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Wallet")
            .field("addresses", &self.order.len())
            .finish()
    }
}

impl Default for Wallet {
    fn default() -> Self {
        Wallet {
            secp: Secp256k1::new(),
            keys: HashMap::new(),
            order: Vec::new(),
        }
    }
}

impl Wallet {
    /// A fresh address of `kind`, whose key the wallet keeps.
    pub fn new_address(&mut self, kind: AddressKind) -> Address {
        let mut rng = bitcoin::secp256k1::rand::thread_rng();
        let (address, key) = match kind {
            AddressKind::P2wpkh => {
                let sk = SecretKey::new(&mut rng);
                let pk = CompressedPublicKey(sk.public_key(&self.secp));
                (Address::p2wpkh(&pk, Network::Regtest), Key::P2wpkh(sk, pk))
            }
            AddressKind::P2tr => {
                let kp = Keypair::new(&self.secp, &mut rng);
                let (xonly, _) = kp.x_only_public_key();
                (
                    Address::p2tr(&self.secp, xonly, None, Network::Regtest),
                    Key::P2tr(kp),
                )
            }
        };
        let script = address.script_pubkey();
        self.order.push(script.clone());
        self.keys.insert(script, key);
        address
    }

    pub fn owns(&self, script: &ScriptBuf) -> bool {
        self.keys.contains_key(script)
    }

    /// The wallet's scripts, oldest first.
    pub fn scripts(&self) -> &[ScriptBuf] {
        &self.order
    }

    /// Signs every input (all must be the wallet's): P2WPKH with ECDSA SIGHASH_ALL, P2TR key
    /// path with Schnorr SIGHASH_DEFAULT. `prevouts[i]` is what input i spends.
    pub fn sign(&self, tx: &mut Transaction, prevouts: &[TxOut]) -> Result<(), String> {
        let mut witnesses = Vec::with_capacity(tx.input.len());
        {
            let mut cache = SighashCache::new(&*tx);
            for (index, prevout) in prevouts.iter().enumerate() {
                let key = self
                    .keys
                    .get(&prevout.script_pubkey)
                    .ok_or_else(|| format!("input {index} is not the wallet's"))?;
                let witness = match key {
                    Key::P2wpkh(sk, pk) => {
                        let sighash = cache
                            .p2wpkh_signature_hash(
                                index,
                                &prevout.script_pubkey,
                                prevout.value,
                                EcdsaSighashType::All,
                            )
                            .map_err(|e| e.to_string())?;
                        let msg = Message::from_digest(sighash.to_byte_array());
                        let sig =
                            bitcoin::ecdsa::Signature::sighash_all(self.secp.sign_ecdsa(&msg, sk));
                        Witness::p2wpkh(&sig, &pk.0)
                    }
                    Key::P2tr(kp) => {
                        let sighash = cache
                            .taproot_key_spend_signature_hash(
                                index,
                                &Prevouts::All(prevouts),
                                TapSighashType::Default,
                            )
                            .map_err(|e| e.to_string())?;
                        let tweaked = kp.tap_tweak(&self.secp, None);
                        let msg = Message::from_digest(sighash.to_byte_array());
                        let sig = self.secp.sign_schnorr(&msg, &tweaked.to_keypair());
                        Witness::p2tr_key_spend(&bitcoin::taproot::Signature {
                            signature: sig,
                            sighash_type: TapSighashType::Default,
                        })
                    }
                };
                witnesses.push(witness);
            }
        }
        for (input, witness) in tx.input.iter_mut().zip(witnesses) {
            input.witness = witness;
        }
        Ok(())
    }
}
