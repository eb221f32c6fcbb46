-- Each custody operation's outcome (`ok` or `error: ...`) is kept in its audit entry, which is
-- appended after the operation ran and before its result is released. Entries written before
-- this migration have none (''), and keep their v1 hash (see keys/audit.rs).
ALTER TABLE sbtc_signer.audit_log ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
