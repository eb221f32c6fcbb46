//! Bitcoin: the bitcoind client, the block observer, deposit scripts, sweeps and the peg UTXO
//! (to come; see ARCHITECTURE.md).
