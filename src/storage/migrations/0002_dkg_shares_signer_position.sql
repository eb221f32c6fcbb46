-- Restart-safe DKG shares: the sealed private shares are bound (as the seal's associated data) to
-- the DKG id and this signer's index in the round (see signing::shares_aad), so a restarted
-- signer needs both to unseal them and sign again. The signer set and threshold are already here.
--
-- Rows written before this migration: they hold neither value, and nothing else in the database
-- does (the seal is opaque), so no default could be right: a guessed id or index would make the
-- row look usable and the unseal fail at the first signing round after a restart. So instead of
-- filling the columns with a default, this migration refuses to run while such rows exist, and
-- says what to do. (There are no production deployments; this only meets devnet and test
-- databases, whose old shares could not be unsealed after a restart anyway.) On an empty table it
-- simply adds the columns.
-- Locked first, so no row can arrive between the check and the ALTER.
LOCK TABLE sbtc_signer.dkg_shares IN ACCESS EXCLUSIVE MODE;

DO $$
DECLARE
    old_rows BIGINT;
BEGIN
    SELECT count(*) INTO old_rows FROM sbtc_signer.dkg_shares;
    IF old_rows > 0 THEN
        RAISE EXCEPTION USING
            MESSAGE = format(
                'sbtc_signer.dkg_shares holds %s row(s) written before DKG ids and signer indexes '
                'were stored; their sealed shares cannot be unsealed after a restart, and no value '
                'can be filled in for them. Keep a copy if you need one (CREATE TABLE '
                'sbtc_signer.dkg_shares_before_v2 AS SELECT * FROM sbtc_signer.dkg_shares), delete '
                'them (DELETE FROM sbtc_signer.dkg_shares), run `sbtc-hsm-signer migrate` again, '
                'and run a new DKG',
                old_rows),
            ERRCODE = 'check_violation';
    END IF;
END
$$;

ALTER TABLE sbtc_signer.dkg_shares
    ADD COLUMN dkg_id BIGINT NOT NULL CHECK (dkg_id > 0),
    ADD COLUMN signer_index INTEGER NOT NULL CHECK (signer_index >= 0);
