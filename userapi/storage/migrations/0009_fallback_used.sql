-- A fallback key that was claimed stays (it is the last resort) but is
-- marked used, so that /sync leaves its algorithm out of
-- device_unused_fallback_key_types and the client uploads a new one.
ALTER TABLE userapi_one_time_keys ADD COLUMN used BOOLEAN NOT NULL DEFAULT FALSE;
