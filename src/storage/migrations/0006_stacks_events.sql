-- The Stacks event observer (src/api/new_block.rs, src/chain/stacks/observer.rs): each Stacks
-- block the node posted, with the Bitcoin height it is anchored at, and the sbtc-registry print
-- events it carried. Blocks of every fork are kept; which of them count is decided at read time
-- (the canonical Stacks chain, see storage::DbRead::get_stacks_canonical_tip).

-- Rows written before this migration: their anchor's height is the stored Bitcoin block's. A row
-- whose anchor was never stored has no height anywhere, and no guess would be right, so the
-- migration refuses to run while such rows exist, and says what to do. (Nothing but tests wrote
-- Stacks blocks before the observer existed.)
LOCK TABLE sbtc_signer.stacks_blocks IN ACCESS EXCLUSIVE MODE;

ALTER TABLE sbtc_signer.stacks_blocks ADD COLUMN bitcoin_anchor_height BIGINT
    CHECK (bitcoin_anchor_height >= 0);

UPDATE sbtc_signer.stacks_blocks s SET bitcoin_anchor_height = b.block_height
  FROM sbtc_signer.bitcoin_blocks b WHERE b.block_hash = s.bitcoin_anchor;

DO $$
DECLARE
    orphans BIGINT;
BEGIN
    SELECT count(*) INTO orphans FROM sbtc_signer.stacks_blocks WHERE bitcoin_anchor_height IS NULL;
    IF orphans > 0 THEN
        RAISE EXCEPTION USING
            MESSAGE = format(
                'sbtc_signer.stacks_blocks holds %s block(s) anchored to Bitcoin blocks this '
                'signer never stored, so their anchor height is unknown. The event observer '
                'stores them again when the stacks-node posts them: delete them (DELETE FROM '
                'sbtc_signer.stacks_blocks WHERE bitcoin_anchor NOT IN (SELECT block_hash FROM '
                'sbtc_signer.bitcoin_blocks)) and run `sbtc-hsm-signer migrate` again',
                orphans),
            ERRCODE = 'check_violation';
    END IF;
END
$$;

ALTER TABLE sbtc_signer.stacks_blocks ALTER COLUMN bitcoin_anchor_height SET NOT NULL;

-- The canonical tip is the highest block on a canonical anchor; parents are walked by hash.
CREATE INDEX stacks_blocks_height ON sbtc_signer.stacks_blocks (block_height DESC, block_hash);

-- One row per kept print event. position: its place among the block's events as the node sent
-- them (transaction order, then event order). The keys queries use: request_id for withdrawal
-- events, the deposit's outpoint for completed-deposit. raw_value: the Clarity tuple as printed,
-- read by chain::stacks::events.
CREATE TABLE sbtc_signer.stacks_registry_events (
    block_hash BYTEA NOT NULL REFERENCES sbtc_signer.stacks_blocks (block_hash),
    txid BYTEA NOT NULL CHECK (length(txid) = 32),
    event_index BIGINT NOT NULL CHECK (event_index BETWEEN 0 AND 4294967295),
    position BIGINT NOT NULL CHECK (position BETWEEN 0 AND 4294967295),
    topic TEXT NOT NULL CHECK (topic IN ('completed-deposit', 'withdrawal-create',
        'withdrawal-accept', 'withdrawal-reject', 'key-rotation')),
    request_id BIGINT CHECK (request_id >= 0),
    deposit_txid BYTEA CHECK (length(deposit_txid) = 32),
    deposit_output_index BIGINT CHECK (deposit_output_index BETWEEN 0 AND 4294967295),
    raw_value BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (block_hash, txid, event_index)
);
CREATE INDEX stacks_registry_events_request ON sbtc_signer.stacks_registry_events (request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX stacks_registry_events_deposit
    ON sbtc_signer.stacks_registry_events (deposit_txid, deposit_output_index)
    WHERE deposit_txid IS NOT NULL;
CREATE INDEX stacks_registry_events_topic ON sbtc_signer.stacks_registry_events (topic);
