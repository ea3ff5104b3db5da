-- The unread counts of every /sync read the notifications of a user in a
-- room that are not read, counting the highlights among them: with the
-- highlight flag in the index, the count reads the index alone, a few
-- pages for hundreds of notifications, rather than one table row (and on
-- a busy server one page) per unread notification.
DROP INDEX userapi_notifications_unread;
CREATE INDEX userapi_notifications_unread ON userapi_notifications (user_id, room_id, is_read, highlight);
