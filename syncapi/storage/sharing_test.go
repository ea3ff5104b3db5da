package storage

import (
	"context"
	"fmt"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

// withMembers opens a fresh syncapi database on dbURL whose current state
// joins members to rooms (room ID -> user IDs), written directly.
func withMembers(t testing.TB, dbURL string, rooms map[string][]string) *Storage {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, dbURL, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	err = db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for room, users := range rooms {
			for i, u := range users {
				if _, err := tx.Exec(ctx, `INSERT INTO syncapi_current_state
					(room_id, event_type, state_key, event_id, membership, sender, pos, event_json)
					VALUES ($1, 'm.room.member', $2, $3, 'join', $2, $4, '{}')`,
					room, u, fmt.Sprintf("$%s-%d", room, i), i); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSharingUsers(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		var big []string
		for i := range 1000 {
			big = append(big, fmt.Sprintf("@m%d:x", i))
		}
		s := withMembers(t, dbURL, map[string][]string{
			"!big:x":   append([]string{"@a:x"}, big...),
			"!small:x": {"@a:x", "@b:x"},
			"!other:x": {"@c:x", "@d:x"},
		})
		for _, tc := range []struct {
			name       string
			candidates []string
			want       int
		}{
			{"none", nil, 0},
			{"one", []string{"@b:x"}, 1},
			{"not sharing", []string{"@c:x", "@d:x", "@nobody:x"}, 0},
			{"a chunk padded", []string{"@b:x", "@c:x", "@m5:x"}, 2},
			{"several chunks", append(append([]string{"@c:x"}, big...), "@b:x"), 1001},
		} {
			got, err := s.SharingUsers(context.Background(), "@a:x", tc.candidates)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.want {
				t.Errorf("%s: %d share a room, want %d", tc.name, len(got), tc.want)
			}
			for u := range got {
				if ok, err := s.SharesRoom(context.Background(), "@a:x", u); err != nil || !ok {
					t.Errorf("%s: %s listed but SharesRoom says %v (%v)", tc.name, u, ok, err)
				}
			}
		}
	})
}

// BenchmarkSharingUsers: a user who joins a room of 10,000 has every
// member's device list checked; batched against one query each.
func BenchmarkSharingUsers(b *testing.B) {
	var members []string
	for i := range 10000 {
		members = append(members, fmt.Sprintf("@m%d:x", i))
	}
	s := withMembers(b, sqldbtest.URL(b, "sqlite"), map[string][]string{"!big:x": append([]string{"@a:x"}, members...)})
	ctx := context.Background()
	b.Run("batched", func(b *testing.B) {
		for range b.N {
			got, err := s.SharingUsers(ctx, "@a:x", members)
			if err != nil || len(got) != len(members) {
				b.Fatal(len(got), err)
			}
		}
	})
	b.Run("one query each", func(b *testing.B) {
		for range b.N {
			for _, m := range members {
				if ok, err := s.SharesRoom(ctx, "@a:x", m); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
		}
	})
}
