-- The identity servers each user bound a third-party identifier on through
-- this server (POST /account/3pid/bind): an unbind that names no identity
-- server, and a deactivation, unbind it from each of them.
CREATE TABLE userapi_threepid_bindings (
	user_id TEXT NOT NULL,
	medium TEXT NOT NULL,
	address TEXT NOT NULL,
	id_server TEXT NOT NULL,
	PRIMARY KEY (user_id, medium, address, id_server)
);
