-- The session (userapi_devices.session_id) of the device a send-to-device
-- message was stored for. A device ID can be deleted and given to a new
-- device while messages for the old one are still stored, or are being
-- stored; the new device, whose session differs, never gets them. 0: a
-- message stored before this column, for whichever device has the ID.
ALTER TABLE syncapi_to_device ADD COLUMN session_id BIGINT NOT NULL DEFAULT 0;
