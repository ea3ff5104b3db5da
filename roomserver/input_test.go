package roomserver_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	rsapi "myelin/roomserver/api"
)

// TestInputRefusesEventTooLarge checks the roomserver refuses an event over
// the spec's 65,536 bytes once built (client-server API, "Size limits"),
// whatever its client checked: here the content alone is under the limit,
// and only prev_events, auth_events, the hash and the signature take the
// event over it.
func TestInputRefusesEventTooLarge(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			rs := startRoomserver(t, d)
			room := createRoom(t, rs, 0)
			ctx := context.Background()
			body := strings.Repeat("x", 65536-300)
			_, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: room, Events: []rsapi.InputEvent{
				proto("@creator:bench.test", "m.room.message", nil, map[string]any{"body": body}),
			}})
			var bad *rsapi.BadEventError
			if !errors.As(err, &bad) || bad.Code != "M_TOO_LARGE" {
				t.Fatalf("an event over 64 KiB once built: %v, want M_TOO_LARGE", err)
			}
			// The room takes events again: the refusal stored nothing.
			if _, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: room, Events: []rsapi.InputEvent{
				proto("@creator:bench.test", "m.room.message", nil, map[string]any{"body": "small"}),
			}}); err != nil {
				t.Fatalf("a small event after the refusal: %v", err)
			}
		})
	}
}
