-- The signer's state. Hashes and keys are BYTEA in internal byte order; amounts are satoshis.
CREATE TYPE sbtc_signer.dkg_shares_status AS ENUM ('unverified', 'verified', 'failed');

CREATE TABLE sbtc_signer.bitcoin_blocks (
    block_hash BYTEA PRIMARY KEY CHECK (length(block_hash) = 32),
    block_height BIGINT NOT NULL CHECK (block_height >= 0),
    parent_hash BYTEA NOT NULL CHECK (length(parent_hash) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX bitcoin_blocks_height ON sbtc_signer.bitcoin_blocks (block_height DESC, block_hash);

-- A transaction may be confirmed in several forks: one row per (txid, block).
CREATE TABLE sbtc_signer.bitcoin_transactions (
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    block_hash BYTEA NOT NULL CHECK (length(block_hash) = 32),
    PRIMARY KEY (txid, block_hash)
);
CREATE INDEX bitcoin_transactions_block ON sbtc_signer.bitcoin_transactions (block_hash);

CREATE TABLE sbtc_signer.stacks_blocks (
    block_hash BYTEA PRIMARY KEY CHECK (length(block_hash) = 32),
    block_height BIGINT NOT NULL CHECK (block_height >= 0),
    parent_hash BYTEA NOT NULL CHECK (length(parent_hash) = 32),
    bitcoin_anchor BYTEA NOT NULL CHECK (length(bitcoin_anchor) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stacks_blocks_anchor ON sbtc_signer.stacks_blocks (bitcoin_anchor);

CREATE TABLE sbtc_signer.deposit_requests (
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    output_index BIGINT NOT NULL CHECK (output_index BETWEEN 0 AND 4294967295),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    max_fee BIGINT NOT NULL CHECK (max_fee >= 0),
    recipient TEXT NOT NULL,
    deposit_script BYTEA NOT NULL,
    reclaim_script BYTEA NOT NULL,
    signers_public_key BYTEA NOT NULL CHECK (length(signers_public_key) = 33),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, output_index)
);

CREATE TABLE sbtc_signer.deposit_signers (
    txid BYTEA NOT NULL,
    output_index BIGINT NOT NULL,
    signer_pub_key BYTEA NOT NULL CHECK (length(signer_pub_key) = 33),
    can_accept BOOLEAN NOT NULL,
    can_sign BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, output_index, signer_pub_key)
);

CREATE TABLE sbtc_signer.withdrawal_requests (
    request_id BIGINT PRIMARY KEY CHECK (request_id >= 0),
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    block_hash BYTEA NOT NULL CHECK (length(block_hash) = 32),
    recipient BYTEA NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    max_fee BIGINT NOT NULL CHECK (max_fee >= 0),
    sender_address TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX withdrawal_requests_block ON sbtc_signer.withdrawal_requests (block_hash);

CREATE TABLE sbtc_signer.withdrawal_signers (
    request_id BIGINT NOT NULL,
    signer_pub_key BYTEA NOT NULL CHECK (length(signer_pub_key) = 33),
    is_accepted BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, signer_pub_key)
);

-- encrypted_private_shares is a SealedBlob from Custody::seal: never plaintext.
CREATE TABLE sbtc_signer.dkg_shares (
    aggregate_key BYTEA PRIMARY KEY CHECK (length(aggregate_key) = 33),
    encrypted_private_shares BYTEA NOT NULL,
    public_shares BYTEA NOT NULL,
    signer_set_public_keys BYTEA[] NOT NULL,
    signature_share_threshold INTEGER NOT NULL CHECK (signature_share_threshold > 0),
    dkg_shares_status sbtc_signer.dkg_shares_status NOT NULL DEFAULT 'unverified',
    started_at_bitcoin_block_hash BYTEA NOT NULL CHECK (length(started_at_bitcoin_block_hash) = 32),
    started_at_bitcoin_block_height BIGINT NOT NULL CHECK (started_at_bitcoin_block_height >= 0),
    -- clock_timestamp(), not now(): shares written in one transaction still get distinct times.
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX dkg_shares_verified ON sbtc_signer.dkg_shares (dkg_shares_status, created_at DESC);

CREATE TABLE sbtc_signer.sweep_transactions (
    txid BYTEA PRIMARY KEY CHECK (length(txid) = 32),
    signers_prevout_txid BYTEA NOT NULL CHECK (length(signers_prevout_txid) = 32),
    signers_prevout_output_index BIGINT NOT NULL,
    fee BIGINT NOT NULL CHECK (fee >= 0),
    chain_tip BYTEA NOT NULL CHECK (length(chain_tip) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sbtc_signer.swept_deposits (
    sweep_txid BYTEA NOT NULL REFERENCES sbtc_signer.sweep_transactions (txid),
    position INTEGER NOT NULL,
    deposit_txid BYTEA NOT NULL,
    deposit_output_index BIGINT NOT NULL,
    PRIMARY KEY (sweep_txid, position)
);
CREATE INDEX swept_deposits_deposit ON sbtc_signer.swept_deposits (deposit_txid, deposit_output_index);

CREATE TABLE sbtc_signer.swept_withdrawals (
    sweep_txid BYTEA NOT NULL REFERENCES sbtc_signer.sweep_transactions (txid),
    position INTEGER NOT NULL,
    request_id BIGINT NOT NULL,
    recipient BYTEA NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (sweep_txid, position)
);
CREATE INDEX swept_withdrawals_request ON sbtc_signer.swept_withdrawals (request_id);

CREATE TABLE sbtc_signer.sighash_decisions (
    sighash BYTEA PRIMARY KEY CHECK (length(sighash) = 32),
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    prevout_txid BYTEA NOT NULL CHECK (length(prevout_txid) = 32),
    prevout_output_index BIGINT NOT NULL,
    will_sign BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The no-equivocation guard: one row per outpoint this signer agreed to spend.
CREATE TABLE sbtc_signer.spend_decisions (
    prevout_txid BYTEA NOT NULL CHECK (length(prevout_txid) = 32),
    prevout_output_index BIGINT NOT NULL,
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    payment_fingerprint BYTEA NOT NULL CHECK (length(payment_fingerprint) = 32),
    decided_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (prevout_txid, prevout_output_index)
);

-- Every transaction approved per outpoint: the first one and its fee bumps.
CREATE TABLE sbtc_signer.spend_approvals (
    seq BIGSERIAL NOT NULL,
    prevout_txid BYTEA NOT NULL,
    prevout_output_index BIGINT NOT NULL,
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    approved_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (prevout_txid, prevout_output_index, txid),
    FOREIGN KEY (prevout_txid, prevout_output_index)
        REFERENCES sbtc_signer.spend_decisions (prevout_txid, prevout_output_index)
);

CREATE TABLE sbtc_signer.stacks_transactions (
    txid BYTEA PRIMARY KEY CHECK (length(txid) = 32),
    kind TEXT NOT NULL,
    nonce BIGINT NOT NULL CHECK (nonce >= 0),
    raw BYTEA NOT NULL,
    bitcoin_chain_tip BYTEA NOT NULL CHECK (length(bitcoin_chain_tip) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sbtc_signer.signer_set_rotations (
    id BIGSERIAL PRIMARY KEY,
    stacks_txid BYTEA NOT NULL UNIQUE CHECK (length(stacks_txid) = 32),
    aggregate_key BYTEA NOT NULL CHECK (length(aggregate_key) = 33),
    signer_set BYTEA[] NOT NULL,
    signature_threshold INTEGER NOT NULL CHECK (signature_threshold > 0),
    bitcoin_block_hash BYTEA NOT NULL CHECK (length(bitcoin_block_hash) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Custody operations that used a private key. hash = SHA-256(prev_hash || canonical entry bytes).
CREATE TABLE sbtc_signer.audit_log (
    seq BIGINT PRIMARY KEY CHECK (seq > 0),
    entry_id BYTEA NOT NULL UNIQUE CHECK (length(entry_id) = 16),
    at TIMESTAMPTZ NOT NULL,
    key_label TEXT NOT NULL,
    operation TEXT NOT NULL,
    message BYTEA NOT NULL,
    reason TEXT NOT NULL,
    prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),
    hash BYTEA NOT NULL CHECK (length(hash) = 32)
);

-- Append-only for everyone who does not switch triggers off (a superuser can; the hash chain
-- catches that).
CREATE FUNCTION sbtc_signer.audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sbtc_signer.audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON sbtc_signer.audit_log
    FOR EACH ROW EXECUTE FUNCTION sbtc_signer.audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON sbtc_signer.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION sbtc_signer.audit_log_append_only();
