-- Every /sync answer reads a user's unread counts in each room it
-- returns. Counting the unread notifications each time grows with the
-- backlog: a member who never reads a busy room made every /sync of every
-- waiter slower as the room went on. The counts are kept here instead,
-- raised as notifications are stored and recounted when a receipt or the
-- pruning changes which are unread.
CREATE TABLE userapi_unread_counts (
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	notifications BIGINT NOT NULL,
	highlights BIGINT NOT NULL,
	PRIMARY KEY (user_id, room_id)
);
INSERT INTO userapi_unread_counts (user_id, room_id, notifications, highlights)
	SELECT user_id, room_id, COUNT(*), SUM(CASE WHEN highlight THEN 1 ELSE 0 END)
	FROM userapi_notifications WHERE NOT is_read GROUP BY user_id, room_id;
