-- Unread counts per thread, for /sync's unread_thread_notifications
-- (threaded read receipts, spec v1.4): the notifications of events in a
-- thread (thread_id, the thread's root), raised and recounted with the
-- room's totals in userapi_unread_counts, which still count every thread.
CREATE TABLE userapi_unread_thread_counts (
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	thread_id TEXT NOT NULL,
	notifications BIGINT NOT NULL,
	highlights BIGINT NOT NULL,
	PRIMARY KEY (user_id, room_id, thread_id)
);
INSERT INTO userapi_unread_thread_counts (user_id, room_id, thread_id, notifications, highlights)
	SELECT user_id, room_id, thread_id, COUNT(*), SUM(CASE WHEN highlight THEN 1 ELSE 0 END)
	FROM userapi_notifications WHERE NOT is_read AND thread_id <> '' GROUP BY user_id, room_id, thread_id;
