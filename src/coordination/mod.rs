//! Coordination: what signers say to each other above the round arithmetic: the adapter
//! between the peer links and the rounds ([`peer_transport`]), the round messages' wire form
//! ([`wire`]), the DKG decision statement, the tenure's proposals and answers ([`proposal`]),
//! the signers' Stacks calls ([`stacks_calls`]) and the store-backed view every signer rebuilds
//! them from ([`call_view`]), and the request decider ([`decider`]) with its policy
//! ([`policy`]) and the votes it signs once per block ([`votes`]).

pub mod call_view;
pub mod decider;
pub mod decision;
pub mod peer_transport;
pub mod peg_utxo;
pub mod policy;
pub mod proposal;
pub mod stacks_calls;
pub mod sweep_config;
pub mod sweeps;
pub mod tenure;
pub mod votes;
pub mod wire;

pub use decider::{withdrawal_expired, DecideContext, DecideError, Decider};
pub use decision::{DecisionVerdict, DkgDecision};
pub use peer_transport::{Incoming, PeerTransport, ReceivedStatement};
pub use policy::{Blocklist, FileBlocklist, NoBlocklist, PolicyConfig, PolicyError};
pub use votes::{BlockVotes, DepositBallot, Verdict, VotesError, WithdrawalBallot};
pub use wire::WireError;
