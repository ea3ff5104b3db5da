package roomserver_test

import (
	"context"
	"errors"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/sqldb/sqldbtest"
	rsapi "myelin/roomserver/api"
)

// TestServerJoined: a server is in a room when one of its users is joined,
// named exactly (not by case, prefix, suffix or a LIKE wildcard); an
// invite is not a join.
func TestServerJoined(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			rs := startRoomserver(t, d)
			room := createRoom(t, rs, 0)
			ctx := context.Background()
			bob := "@bob:other.test"
			if _, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: room, Events: []rsapi.InputEvent{
				proto("@creator:bench.test", "m.room.member", &bob, map[string]any{"membership": "invite"}),
			}}); err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				server spec.ServerName
				want   bool
			}{
				{"bench.test", true},
				{"other.test", false},
				{"BENCH.TEST", false},
				{"bench.tes", false},
				{"ench.test", false},
				{"_ench.test", false},
				{"%", false},
				{"", false},
			}
			for _, tt := range tests {
				got, err := rs.ServerJoined(ctx, room, tt.server)
				if err != nil || got != tt.want {
					t.Errorf("ServerJoined(%q) = %v, %v; want %v", tt.server, got, err, tt.want)
				}
			}
			if _, err := rs.ServerJoined(ctx, "!nope:bench.test", "bench.test"); !errors.Is(err, rsapi.ErrRoomNotFound) {
				t.Errorf("unknown room: %v, want ErrRoomNotFound", err)
			}
		})
	}
}
