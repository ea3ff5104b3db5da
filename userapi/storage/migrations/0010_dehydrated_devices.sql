-- Dehydrated devices (MSC3814): at most one per user, a device like any
-- other (in userapi_devices, with keys) whose opaque device_data lets the
-- user's next client take over the room keys sent to it.
CREATE TABLE userapi_dehydrated_devices (
    user_id TEXT NOT NULL PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
