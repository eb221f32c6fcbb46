//! Stacks: the node client, the transaction codec, SIP-027 multisig, contract calls and the
//! event observer (to come; see ARCHITECTURE.md).
