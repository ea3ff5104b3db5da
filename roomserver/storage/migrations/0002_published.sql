-- Rooms published in this server's public room directory.
CREATE TABLE roomserver_published (
    room_id TEXT PRIMARY KEY
);
