//! This signer's own policy for the requests it votes on (`[policy]` in the node config): the
//! per-deposit minimum and cap, the peg cap, the per-withdrawal and rolling caps, the windows,
//! and an optional blocklist. Each signer sets its own; the threshold of signers decides.
//!
//! Every field is optional with a default, unknown fields are refused (a typo must not silently
//! leave a cap off), and [`PolicyConfig::validate`] refuses settings that contradict each other
//! at start, naming the field and what to change.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use bitcoin::Amount;
use serde::Deserialize;

/// Outputs below this are non-standard on Bitcoin: no deposit or payout may be smaller.
pub const DUST_LIMIT: Amount = Amount::from_sat(546);
/// All the bitcoin there will ever be: a cap above it is a typo.
const MAX_MONEY_SATS: u64 = 21_000_000 * 100_000_000;

/// `[policy]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The smallest deposit this signer accepts (sats).
    pub deposit_min_sats: u64,
    /// The largest deposit it accepts; none = no cap.
    pub deposit_max_sats: Option<u64>,
    /// The most the peg wallet may hold, pending deposits it accepts included; none = no cap.
    pub peg_cap_sats: Option<u64>,
    /// The largest withdrawal it accepts; none = no cap.
    pub withdrawal_max_sats: Option<u64>,
    /// The most it accepts in withdrawals requested over the last `rolling_withdrawal_blocks`
    /// blocks (paid ones and the ones it voted to accept); none = no cap.
    pub rolling_withdrawal_cap_sats: Option<u64>,
    /// The rolling cap's window, in Bitcoin blocks.
    pub rolling_withdrawal_blocks: u32,
    /// How far back (in Bitcoin blocks, the tip included) pending deposits are voted on.
    pub deposit_window_blocks: u32,
    /// A text file of blocked Bitcoin addresses and Stacks principals, one a line, `#` comments.
    pub blocklist_file: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            deposit_min_sats: 10_000,
            deposit_max_sats: None,
            peg_cap_sats: None,
            withdrawal_max_sats: None,
            rolling_withdrawal_cap_sats: None,
            rolling_withdrawal_blocks: 144,
            deposit_window_blocks: 144,
            blocklist_file: None,
        }
    }
}

/// A `[policy]` setting that cannot work, or a blocklist that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("[policy] {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(
        "[policy] blocklist_file {path}: {reason}; fix the file or remove blocklist_file to run \
         without a blocklist"
    )]
    Blocklist { path: PathBuf, reason: String },
}

fn field(field: &'static str, message: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field,
        message: message.into(),
    }
}

impl PolicyConfig {
    /// Refuses settings that contradict each other or could never let a request through.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let money = |name: &'static str, value: Option<u64>| match value {
            Some(v) if v > MAX_MONEY_SATS => Err(field(
                name,
                format!("{v} sat is more than 21 million BTC; check the number of zeros"),
            )),
            _ => Ok(()),
        };
        money("deposit_min_sats", Some(self.deposit_min_sats))?;
        money("deposit_max_sats", self.deposit_max_sats)?;
        money("peg_cap_sats", self.peg_cap_sats)?;
        money("withdrawal_max_sats", self.withdrawal_max_sats)?;
        money(
            "rolling_withdrawal_cap_sats",
            self.rolling_withdrawal_cap_sats,
        )?;
        if self.deposit_min_sats <= DUST_LIMIT.to_sat() {
            return Err(field(
                "deposit_min_sats",
                format!(
                    "{} sat is not above the dust limit ({} sat): such a deposit could never be \
                     minted; set it above {}",
                    self.deposit_min_sats,
                    DUST_LIMIT.to_sat(),
                    DUST_LIMIT.to_sat()
                ),
            ));
        }
        if let Some(max) = self.deposit_max_sats {
            if max < self.deposit_min_sats {
                return Err(field(
                    "deposit_max_sats",
                    format!(
                        "{max} sat is below deposit_min_sats ({} sat): no deposit could pass; \
                         raise deposit_max_sats or lower deposit_min_sats",
                        self.deposit_min_sats
                    ),
                ));
            }
        }
        if let Some(cap) = self.peg_cap_sats {
            let smallest = self.deposit_min_sats;
            if cap < smallest {
                return Err(field(
                    "peg_cap_sats",
                    format!(
                        "{cap} sat is below deposit_min_sats ({smallest} sat): no deposit could \
                         ever fit; raise peg_cap_sats"
                    ),
                ));
            }
        }
        if let Some(max) = self.withdrawal_max_sats {
            if max <= DUST_LIMIT.to_sat() {
                return Err(field(
                    "withdrawal_max_sats",
                    format!(
                        "{max} sat is not above the dust limit ({} sat): no withdrawal could be \
                         paid; raise it or remove it for no cap",
                        DUST_LIMIT.to_sat()
                    ),
                ));
            }
        }
        if let Some(rolling) = self.rolling_withdrawal_cap_sats {
            if rolling <= DUST_LIMIT.to_sat() {
                return Err(field(
                    "rolling_withdrawal_cap_sats",
                    format!(
                        "{rolling} sat is not above the dust limit ({} sat): no withdrawal could \
                         be paid; raise it or remove it for no cap",
                        DUST_LIMIT.to_sat()
                    ),
                ));
            }
            if let Some(max) = self.withdrawal_max_sats {
                if max > rolling {
                    return Err(field(
                        "withdrawal_max_sats",
                        format!(
                            "{max} sat is above rolling_withdrawal_cap_sats ({rolling} sat), so \
                             it would never be reached; lower withdrawal_max_sats or raise the \
                             rolling cap"
                        ),
                    ));
                }
            }
        }
        if self.rolling_withdrawal_blocks == 0 {
            return Err(field(
                "rolling_withdrawal_blocks",
                "0 blocks is no window; use at least 1 (144 is about a day)",
            ));
        }
        if self.deposit_window_blocks == 0 {
            return Err(field(
                "deposit_window_blocks",
                "0 blocks would vote on no deposit; use at least 1 (144 is about a day)",
            ));
        }
        Ok(())
    }

    pub fn deposit_min(&self) -> Amount {
        Amount::from_sat(self.deposit_min_sats)
    }

    pub fn deposit_max(&self) -> Option<Amount> {
        self.deposit_max_sats.map(Amount::from_sat)
    }

    pub fn peg_cap(&self) -> Option<Amount> {
        self.peg_cap_sats.map(Amount::from_sat)
    }

    pub fn withdrawal_max(&self) -> Option<Amount> {
        self.withdrawal_max_sats.map(Amount::from_sat)
    }

    pub fn rolling_withdrawal_cap(&self) -> Option<Amount> {
        self.rolling_withdrawal_cap_sats.map(Amount::from_sat)
    }

    /// The blocklist `blocklist_file` names, loaded now, or [`NoBlocklist`].
    pub fn blocklist(&self) -> Result<Arc<dyn Blocklist>, PolicyError> {
        Ok(match &self.blocklist_file {
            Some(path) => Arc::new(FileBlocklist::load(path)?),
            None => Arc::new(NoBlocklist),
        })
    }
}

/// Who this signer refuses to serve. A hook: the file below, or an operator's own screening.
pub trait Blocklist: Send + Sync {
    /// `who` is a Bitcoin address or a Stacks principal as text.
    fn is_blocked(&self, who: &str) -> bool;
}

/// Nobody is blocked.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBlocklist;

impl Blocklist for NoBlocklist {
    fn is_blocked(&self, _: &str) -> bool {
        false
    }
}

/// A blocklist read once at start from a text file: one address or principal a line, blank
/// lines and `#` comments (whole-line or after an entry) ignored. Bech32 addresses match in any
/// case; other entries match exactly. A blocked standard principal blocks its contracts too.
#[derive(Clone, Debug)]
pub struct FileBlocklist {
    entries: HashSet<String>,
}

/// Bech32 is case-insensitive; base58 and c32 are not.
fn normalize(who: &str) -> String {
    let lower = who.to_ascii_lowercase();
    if ["bc1", "tb1", "bcrt1"].iter().any(|p| lower.starts_with(p)) {
        lower
    } else {
        who.to_owned()
    }
}

impl FileBlocklist {
    /// Reads `path`; a missing or unreadable file, or a line with two words, is an error: a
    /// signer never runs with a blocklist it believes it has but does not.
    pub fn load(path: &Path) -> Result<FileBlocklist, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Blocklist {
            path: path.to_owned(),
            reason: format!("cannot read it ({e})"),
        })?;
        FileBlocklist::parse(&text).map_err(|reason| PolicyError::Blocklist {
            path: path.to_owned(),
            reason,
        })
    }

    /// The file's text, checked.
    pub fn parse(text: &str) -> Result<FileBlocklist, String> {
        let mut entries = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            if entry.split_whitespace().count() != 1 {
                return Err(format!(
                    "line {} holds more than one word ({entry:?}); put one address or principal \
                     on each line",
                    n + 1
                ));
            }
            entries.insert(normalize(entry));
        }
        Ok(FileBlocklist { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Blocklist for FileBlocklist {
    fn is_blocked(&self, who: &str) -> bool {
        let who = normalize(who.trim());
        if self.entries.contains(&who) {
            return true;
        }
        // `SP….contract-name`: its deployer's block covers it.
        who.split_once('.')
            .is_some_and(|(issuer, _)| self.entries.contains(issuer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_contradictions_name_the_field() {
        PolicyConfig::default().validate().unwrap();
        let p = PolicyConfig {
            deposit_max_sats: Some(5_000),
            ..Default::default()
        };
        let err = p.validate().unwrap_err().to_string();
        assert!(
            err.contains("deposit_max_sats") && err.contains("deposit_min_sats"),
            "{err}"
        );
        let p = PolicyConfig {
            withdrawal_max_sats: Some(2_000_000),
            rolling_withdrawal_cap_sats: Some(1_000_000),
            ..Default::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("withdrawal_max_sats"));
        let p = PolicyConfig {
            deposit_min_sats: 546,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("dust"));
    }

    #[test]
    fn the_blocklist_file_reads_comments_and_refuses_two_words_on_a_line() {
        let list = FileBlocklist::parse(
            "# screened\n\nBCRT1QXYZ  # a bech32 address\nSP000000000000000000002Q6VF78\n",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.is_blocked("bcrt1qxyz"));
        assert!(list.is_blocked("SP000000000000000000002Q6VF78.some-contract"));
        assert!(!list.is_blocked("sp000000000000000000002q6vf78"));
        let err = FileBlocklist::parse("a b\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
