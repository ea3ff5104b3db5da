package mxid

import (
	"crypto/rand"
	"math/big"
)

const roomIDChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// NewRoomID returns a fresh room ID on server for the room versions whose
// room IDs the server chooses (1 to 11; from version 12 a room's ID is the
// hash of its create event): 18 random letters, as /createRoom and room
// upgrades make them.
func NewRoomID(server string) string {
	b := make([]byte, 18)
	for i := range b {
		k, _ := rand.Int(rand.Reader, big.NewInt(int64(len(roomIDChars))))
		b[i] = roomIDChars[k.Int64()]
	}
	return "!" + string(b) + ":" + server
}
