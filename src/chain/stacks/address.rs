//! Stacks principals and addresses: the Clarity serialization the deposit leaf carries (CHAIN.md
//! section 1), and the c32check address text operators read (`SP…`, `ST…`, `SP….name`).
//!
//! The text codec is the `c32` crate (Crockford base32 with a double-SHA256 checksum, the
//! c32check scheme); this file adds what makes it a Stacks address: the `S` prefix, the
//! four address versions, 20-byte hashes and contract names.

use std::fmt;
use std::str::FromStr;

use bitcoin::Network;

/// Address version: mainnet single-signature (`SP…`).
pub const VERSION_MAINNET_SINGLESIG: u8 = 22;
/// Address version: mainnet multi-signature (`SM…`).
pub const VERSION_MAINNET_MULTISIG: u8 = 20;
/// Address version: testnet single-signature (`ST…`).
pub const VERSION_TESTNET_SINGLESIG: u8 = 26;
/// Address version: testnet multi-signature (`SN…`).
pub const VERSION_TESTNET_MULTISIG: u8 = 21;

/// Clarity's type prefix of a standard principal.
const TYPE_STANDARD: u8 = 0x05;
/// Clarity's type prefix of a contract principal.
const TYPE_CONTRACT: u8 = 0x06;
/// Longest contract name Clarity deserializes (new deployments are limited to 40; older
/// contracts may have up to 128, and nodes still accept them).
pub const CONTRACT_NAME_MAX_LEN: usize = 128;

/// The Stacks network an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StacksNetwork {
    Mainnet,
    Testnet,
}

impl StacksNetwork {
    /// The Stacks network that settles on `network`: Bitcoin mainnet ↔ Stacks mainnet; every
    /// Bitcoin test network (testnet, testnet4, signet, regtest) ↔ Stacks testnet.
    pub fn for_bitcoin(network: Network) -> StacksNetwork {
        match network {
            Network::Bitcoin => StacksNetwork::Mainnet,
            _ => StacksNetwork::Testnet,
        }
    }

    /// The network of an address version, if it is one of the four Stacks uses.
    pub fn of_version(version: u8) -> Option<StacksNetwork> {
        match version {
            VERSION_MAINNET_SINGLESIG | VERSION_MAINNET_MULTISIG => Some(StacksNetwork::Mainnet),
            VERSION_TESTNET_SINGLESIG | VERSION_TESTNET_MULTISIG => Some(StacksNetwork::Testnet),
            _ => None,
        }
    }

    /// The address versions of this network, as text (`SP`/`SM` or `ST`/`SN`).
    pub fn prefixes(self) -> &'static str {
        match self {
            StacksNetwork::Mainnet => "SP… or SM…",
            StacksNetwork::Testnet => "ST… or SN…",
        }
    }
}

impl fmt::Display for StacksNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StacksNetwork::Mainnet => "Stacks mainnet",
            StacksNetwork::Testnet => "Stacks testnet",
        })
    }
}

/// A Clarity principal: standard (`version`, hash160) or contract (plus a contract name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Standard {
        version: u8,
        hash160: [u8; 20],
    },
    Contract {
        version: u8,
        hash160: [u8; 20],
        name: String,
    },
}

/// Why bytes or text are not a principal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error("the principal is empty")]
    Empty,
    #[error("the principal's type byte is 0x{0:02x}, not 0x05 (standard) or 0x06 (contract)")]
    UnknownType(u8),
    #[error("the principal ends after {got} bytes, {needed} needed")]
    Truncated { needed: usize, got: usize },
    #[error("the principal has {0} bytes after its end")]
    TrailingBytes(usize),
    #[error(
        "address version {0} is none of Stacks' (22 SP and 20 SM on mainnet, 26 ST and 21 SN on \
         testnet)"
    )]
    UnknownVersion(u8),
    #[error("contract name {name:?} is not valid: {why}")]
    BadContractName { name: String, why: &'static str },
    #[error("{text:?} is not a Stacks address: {why}")]
    BadAddress { text: String, why: String },
}

impl Principal {
    /// A standard principal, refusing an address version Stacks does not use.
    pub fn standard(version: u8, hash160: [u8; 20]) -> Result<Principal, PrincipalError> {
        check_version(version)?;
        Ok(Principal::Standard { version, hash160 })
    }

    /// A contract principal, refusing an unknown version or a name Clarity would not accept.
    pub fn contract(
        version: u8,
        hash160: [u8; 20],
        name: impl Into<String>,
    ) -> Result<Principal, PrincipalError> {
        check_version(version)?;
        let name = name.into();
        check_contract_name(&name)?;
        Ok(Principal::Contract {
            version,
            hash160,
            name,
        })
    }

    pub fn version(&self) -> u8 {
        match self {
            Principal::Standard { version, .. } | Principal::Contract { version, .. } => *version,
        }
    }

    pub fn hash160(&self) -> &[u8; 20] {
        match self {
            Principal::Standard { hash160, .. } | Principal::Contract { hash160, .. } => hash160,
        }
    }

    pub fn contract_name(&self) -> Option<&str> {
        match self {
            Principal::Standard { .. } => None,
            Principal::Contract { name, .. } => Some(name),
        }
    }

    /// The Stacks network of its address version; None for a version Stacks does not use.
    pub fn network(&self) -> Option<StacksNetwork> {
        StacksNetwork::of_version(self.version())
    }

    /// Clarity's consensus serialization: `0x05 ‖ version ‖ hash160`, or
    /// `0x06 ‖ version ‖ hash160 ‖ name_len ‖ name`.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + CONTRACT_NAME_MAX_LEN);
        match self {
            Principal::Standard { version, hash160 } => {
                out.push(TYPE_STANDARD);
                out.push(*version);
                out.extend_from_slice(hash160);
            }
            Principal::Contract {
                version,
                hash160,
                name,
            } => {
                out.push(TYPE_CONTRACT);
                out.push(*version);
                out.extend_from_slice(hash160);
                // A name longer than a byte can say is not a principal; `contract()` refuses
                // one, and one built by hand is cut so the length byte stays true.
                let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
                out.push(name.len() as u8);
                out.extend_from_slice(name);
            }
        }
        out
    }

    /// Parses exactly one serialized principal spanning all of `bytes`.
    pub fn deserialize(bytes: &[u8]) -> Result<Principal, PrincipalError> {
        let (&kind, rest) = bytes.split_first().ok_or(PrincipalError::Empty)?;
        if kind != TYPE_STANDARD && kind != TYPE_CONTRACT {
            return Err(PrincipalError::UnknownType(kind));
        }
        if rest.len() < 21 {
            return Err(PrincipalError::Truncated {
                needed: 22,
                got: bytes.len(),
            });
        }
        let version = rest[0];
        check_version(version)?;
        let mut hash160 = [0u8; 20];
        hash160.copy_from_slice(&rest[1..21]);
        let rest = &rest[21..];
        if kind == TYPE_STANDARD {
            if !rest.is_empty() {
                return Err(PrincipalError::TrailingBytes(rest.len()));
            }
            return Ok(Principal::Standard { version, hash160 });
        }
        let (&len, name) = rest.split_first().ok_or(PrincipalError::Truncated {
            needed: 23,
            got: bytes.len(),
        })?;
        let len = len as usize;
        if name.len() < len {
            return Err(PrincipalError::Truncated {
                needed: 23 + len,
                got: bytes.len(),
            });
        }
        if name.len() > len {
            return Err(PrincipalError::TrailingBytes(name.len() - len));
        }
        let name = std::str::from_utf8(name).map_err(|_| PrincipalError::BadContractName {
            name: String::from_utf8_lossy(name).into_owned(),
            why: "it is not ASCII",
        })?;
        Principal::contract(version, hash160, name)
    }

    /// The address as text: `SP…` for a standard principal, `SP….name` for a contract.
    pub fn to_address(&self) -> Result<String, PrincipalError> {
        let address = c32::encode_check_prefixed(self.hash160(), 'S', self.version())
            .map_err(|_| PrincipalError::UnknownVersion(self.version()))?;
        Ok(match self.contract_name() {
            None => address,
            Some(name) => format!("{address}.{name}"),
        })
    }

    /// Parses `SP…` or `SP….name` (c32check, case-insensitive, as the Stacks tools do).
    pub fn from_address(text: &str) -> Result<Principal, PrincipalError> {
        let bad = |why: String| PrincipalError::BadAddress {
            text: text.to_owned(),
            why,
        };
        let (address, name) = match text.split_once('.') {
            Some((address, name)) => (address, Some(name)),
            None => (text, None),
        };
        let upper = address.to_ascii_uppercase();
        let (hash, version) = c32::decode_check_prefixed(&upper, 'S').map_err(|e| {
            bad(match e {
                c32::Error::MissingPrefix { .. } => "it does not start with S".into(),
                c32::Error::ChecksumMismatch { .. } => {
                    "its checksum does not match (a typo?)".into()
                }
                other => other.to_string(),
            })
        })?;
        let hash160: [u8; 20] = hash
            .try_into()
            .map_err(|h: Vec<u8>| bad(format!("it holds {} bytes, not a 20-byte hash", h.len())))?;
        match name {
            None => Principal::standard(version, hash160),
            Some(name) => Principal::contract(version, hash160, name),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_address() {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(
                f,
                "<principal with invalid version {} and hash {}>",
                self.version(),
                hex::encode(self.hash160())
            ),
        }
    }
}

impl FromStr for Principal {
    type Err = PrincipalError;

    fn from_str(text: &str) -> Result<Principal, PrincipalError> {
        Principal::from_address(text)
    }
}

fn check_version(version: u8) -> Result<(), PrincipalError> {
    match StacksNetwork::of_version(version) {
        Some(_) => Ok(()),
        None => Err(PrincipalError::UnknownVersion(version)),
    }
}

/// Clarity's contract-name rules: 1 to 128 ASCII characters, a letter first, then letters,
/// digits, `-` or `_`. (Clarity also knows the reserved name `__transient`, which no deployed
/// contract has, so no deposit can be minted to it.)
pub fn check_contract_name(name: &str) -> Result<(), PrincipalError> {
    let bad = |why| {
        Err(PrincipalError::BadContractName {
            name: name.to_owned(),
            why,
        })
    };
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > CONTRACT_NAME_MAX_LEN {
        return bad("it is longer than 128 characters");
    }
    if !first.is_ascii_alphabetic() {
        return bad("it does not start with a letter");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("it has a character other than a letter, a digit, '-' or '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> [u8; 20] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// Vectors from the c32check reference implementation's test suite (hash, version, text).
    const VECTORS: &[(&str, u8, &str)] = &[
        (
            "a46ff88886c2ef9762d970b4d2c63678835bd39d",
            22,
            "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7",
        ),
        (
            "a46ff88886c2ef9762d970b4d2c63678835bd39d",
            20,
            "SM2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQVX8X0G",
        ),
        (
            "a46ff88886c2ef9762d970b4d2c63678835bd39d",
            26,
            "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ",
        ),
        (
            "a46ff88886c2ef9762d970b4d2c63678835bd39d",
            21,
            "SN2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKP6D2ZK9",
        ),
        // Leading zero bytes are where hand-written base32 goes wrong.
        (
            "0000000000000000000000000000000000000000",
            22,
            "SP000000000000000000002Q6VF78",
        ),
        (
            "0000000000000000000000000000000000000001",
            26,
            "ST000000000000000000042DB08Y",
        ),
        (
            "1000000000000000000000000000000000000000",
            21,
            "SN800000000000000000000000000000006H75AK",
        ),
    ];

    #[test]
    fn c32check_vectors_encode_and_decode() {
        for (hash, version, text) in VECTORS {
            let p = Principal::standard(*version, h(hash)).unwrap();
            assert_eq!(p.to_address().unwrap(), *text);
            assert_eq!(Principal::from_address(text).unwrap(), p);
            // Case-insensitive, as the Stacks tools read it.
            assert_eq!(
                Principal::from_address(&text.to_ascii_lowercase()).unwrap(),
                p
            );
        }
    }

    #[test]
    fn the_mainnet_deployer_round_trips() {
        let text = "SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4";
        let p: Principal = text.parse().unwrap();
        assert_eq!(p.version(), VERSION_MAINNET_MULTISIG);
        assert_eq!(
            hex::encode(p.hash160()),
            "f6decc7cfff2a413bd7cd4f53c25ad7fd1899acc"
        );
        assert_eq!(p.to_string(), text);
        let contract: Principal = format!("{text}.sbtc-registry").parse().unwrap();
        assert_eq!(contract.contract_name(), Some("sbtc-registry"));
        assert_eq!(contract.to_string(), format!("{text}.sbtc-registry"));
        assert_eq!(contract.network(), Some(StacksNetwork::Mainnet));
    }

    #[test]
    fn the_address_of_a_known_key() {
        // The compressed public key of private key 1 (the generator), whose hash160 is the
        // well-known 751e76e8…; its Stacks addresses as c32check (npm) prints them.
        let key: bitcoin::PublicKey =
            "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
                .parse()
                .unwrap();
        let hash = key.pubkey_hash();
        let hash: &[u8] = hash.as_ref();
        let hash: [u8; 20] = hash.try_into().unwrap();
        assert_eq!(
            hex::encode(hash),
            "751e76e8199196d454941c45d1b3a323f1433bd6"
        );
        let mainnet = Principal::standard(VERSION_MAINNET_SINGLESIG, hash).unwrap();
        assert_eq!(
            mainnet.to_string(),
            "SP1THWXQ8368SDN2MJGE4BMDKMCHZ2GSVTS1X0BPM"
        );
        let testnet = Principal::standard(VERSION_TESTNET_SINGLESIG, hash).unwrap();
        assert_eq!(
            testnet.to_string(),
            "ST1THWXQ8368SDN2MJGE4BMDKMCHZ2GSVTSQDA7QF"
        );
    }

    #[test]
    fn bad_address_text_is_refused_with_the_reason() {
        // One character changed: the checksum catches it.
        let err = Principal::from_address("ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RR").unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        let err = Principal::from_address("XP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7").unwrap_err();
        assert!(err.to_string().contains("start with S"), "{err}");
        // A valid c32check string of version 0 is no Stacks address.
        let err = Principal::from_address("S02J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKPVKG2CE").unwrap_err();
        assert_eq!(err, PrincipalError::UnknownVersion(0));
        let err = Principal::from_address("SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7.9lives")
            .unwrap_err();
        assert!(
            matches!(err, PrincipalError::BadContractName { .. }),
            "{err}"
        );
    }

    #[test]
    fn clarity_serialization_round_trips() {
        let standard =
            Principal::standard(20, h("a46ff88886c2ef9762d970b4d2c63678835bd39d")).unwrap();
        let bytes = standard.serialize();
        // A standard principal as Clarity's serialization examples show it (version 0x14).
        assert_eq!(
            hex::encode(&bytes),
            "0514a46ff88886c2ef9762d970b4d2c63678835bd39d"
        );
        assert_eq!(Principal::deserialize(&bytes).unwrap(), standard);

        let contract = Principal::contract(
            26,
            h("a46ff88886c2ef9762d970b4d2c63678835bd39d"),
            "my-vault_2",
        )
        .unwrap();
        let bytes = contract.serialize();
        assert_eq!(bytes[0], 0x06);
        assert_eq!(bytes[22] as usize, "my-vault_2".len());
        assert_eq!(&bytes[23..], b"my-vault_2");
        assert_eq!(Principal::deserialize(&bytes).unwrap(), contract);

        let longest = "a".repeat(CONTRACT_NAME_MAX_LEN);
        let contract = Principal::contract(22, [7; 20], longest).unwrap();
        assert_eq!(
            Principal::deserialize(&contract.serialize()).unwrap(),
            contract
        );
    }

    #[test]
    fn malformed_serializations_are_refused() {
        let good = Principal::standard(22, [1; 20]).unwrap().serialize();
        assert_eq!(Principal::deserialize(&[]), Err(PrincipalError::Empty));
        let mut wrong_type = good.clone();
        wrong_type[0] = 0x07;
        assert_eq!(
            Principal::deserialize(&wrong_type),
            Err(PrincipalError::UnknownType(0x07))
        );
        assert!(matches!(
            Principal::deserialize(&good[..21]),
            Err(PrincipalError::Truncated { .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Principal::deserialize(&trailing),
            Err(PrincipalError::TrailingBytes(1))
        );
        let mut version = good.clone();
        version[1] = 0x1f;
        assert_eq!(
            Principal::deserialize(&version),
            Err(PrincipalError::UnknownVersion(0x1f))
        );

        let contract = Principal::contract(22, [1; 20], "vault")
            .unwrap()
            .serialize();
        // Name length says 6 but 5 bytes follow.
        let mut short = contract.clone();
        short[22] = 6;
        assert!(matches!(
            Principal::deserialize(&short),
            Err(PrincipalError::Truncated { .. })
        ));
        let mut long = contract.clone();
        long[22] = 4;
        assert_eq!(
            Principal::deserialize(&long),
            Err(PrincipalError::TrailingBytes(1))
        );
        for name in ["", "1vault", "va.lt", "vault!", "__transient", "vaült"] {
            let mut bytes = contract[..22].to_vec();
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name.as_bytes());
            assert!(
                matches!(
                    Principal::deserialize(&bytes),
                    Err(PrincipalError::BadContractName { .. })
                ),
                "{name:?} was accepted"
            );
        }
        let too_long = "a".repeat(CONTRACT_NAME_MAX_LEN + 1);
        assert!(Principal::contract(22, [1; 20], too_long).is_err());
    }

    #[test]
    fn networks_follow_bitcoin() {
        assert_eq!(
            StacksNetwork::for_bitcoin(Network::Bitcoin),
            StacksNetwork::Mainnet
        );
        for n in [
            Network::Testnet,
            Network::Testnet4,
            Network::Signet,
            Network::Regtest,
        ] {
            assert_eq!(StacksNetwork::for_bitcoin(n), StacksNetwork::Testnet);
        }
        assert_eq!(StacksNetwork::of_version(22), Some(StacksNetwork::Mainnet));
        assert_eq!(StacksNetwork::of_version(20), Some(StacksNetwork::Mainnet));
        assert_eq!(StacksNetwork::of_version(26), Some(StacksNetwork::Testnet));
        assert_eq!(StacksNetwork::of_version(21), Some(StacksNetwork::Testnet));
        assert_eq!(StacksNetwork::of_version(0), None);
    }
}
