-- Guest accounts (registered with kind=guest): limited to what guests may
-- do until upgraded to a full account.
ALTER TABLE userapi_accounts ADD COLUMN is_guest BOOLEAN NOT NULL DEFAULT FALSE;
