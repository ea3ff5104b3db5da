-- Send-to-device messages waiting for their device: deleted once the
-- device has synced past them (spec: "Send-to-Device messaging").
CREATE TABLE syncapi_to_device (
	pos {{serial}},
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	sender TEXT NOT NULL,
	-- unique per sender: a message delivered twice by the bus (or sent
	-- twice by another server) is stored once
	message_id TEXT NOT NULL,
	event_type TEXT NOT NULL,
	content TEXT NOT NULL
);
CREATE INDEX syncapi_to_device_device ON syncapi_to_device (user_id, device_id, pos);
CREATE UNIQUE INDEX syncapi_to_device_message ON syncapi_to_device (user_id, device_id, sender, message_id);
