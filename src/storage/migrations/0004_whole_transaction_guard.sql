-- The whole-transaction guard: a fee bump must send its change to the scripts the first approved
-- transaction used and must raise the fee, so both are recorded. Decisions and approvals made
-- before this migration keep NULL here: no change script or fee is known for them, so the guard
-- refuses any bump against them ("decided_before_upgrade") and only approves the transaction
-- that was decided (a repeat).
ALTER TABLE sbtc_signer.spend_decisions ADD COLUMN change_scripts BYTEA[];
ALTER TABLE sbtc_signer.spend_approvals ADD COLUMN fee BIGINT CHECK (fee >= 0);
