-- The rooms of a user: whether a remote user shares a room with a local
-- one (/keys/query, device list updates) starts from the user's own
-- member rows, which were found by scanning every room's members.
CREATE INDEX userapi_room_members_user ON userapi_room_members (user_id, membership);
