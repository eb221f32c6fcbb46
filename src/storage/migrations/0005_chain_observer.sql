-- The block observer (src/chain/bitcoin/observer.rs): the canonical tip it last followed, the
-- transactions that matter to the signers, and deposits as wallets and peers announced them.

-- One row: the tip the node reported, whose ancestors are the canonical chain.
CREATE TABLE sbtc_signer.bitcoin_canonical_tip (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    block_hash BYTEA NOT NULL REFERENCES sbtc_signer.bitcoin_blocks (block_hash),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TYPE sbtc_signer.observed_kind AS ENUM ('deposit', 'sweep', 'donation');

-- Each transaction once; the blocks that confirmed it are in bitcoin_transactions.
CREATE TABLE sbtc_signer.observed_transactions (
    txid BYTEA PRIMARY KEY CHECK (length(txid) = 32),
    kind sbtc_signer.observed_kind NOT NULL,
    tx BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- source_peer is NULL for a wallet's own POST, else the announcing signer's key.
CREATE TABLE sbtc_signer.deposit_submissions (
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    output_index BIGINT NOT NULL CHECK (output_index BETWEEN 0 AND 4294967295),
    deposit_script BYTEA NOT NULL,
    reclaim_script BYTEA NOT NULL,
    tx BYTEA NOT NULL,
    source_peer BYTEA CHECK (source_peer IS NULL OR length(source_peer) = 33),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, output_index)
);
