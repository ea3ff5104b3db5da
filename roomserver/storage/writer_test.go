package storage

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/sqldb/sqldbtest"
)

// TestInputLoggedAll: the batched look-up of the input log finds what
// was logged, in this transaction or before, and nothing else, however
// many keys it is asked for (its IN lists come in chunks).
func TestInputLoggedAll(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db := sqldbtest.Open(t, dbURL)
		s, err := Open(ctx, db, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Write(ctx, func(w *Writer) error {
			return w.LogInput(ctx, "req/$before", "before")
		}); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, 3, 600} {
			t.Run(fmt.Sprintf("%d keys", n), func(t *testing.T) {
				keys := []string{"req/$before"}
				for i := range n {
					keys = append(keys, fmt.Sprintf("req%d/$e%d", n, i))
				}
				err := s.Write(ctx, func(w *Writer) error {
					if err := w.LogInput(ctx, keys[n], "last"); err != nil {
						return err
					}
					got, err := w.InputLoggedAll(ctx, keys)
					if err != nil {
						return err
					}
					want := map[string]string{"req/$before": "before", keys[n]: "last"}
					if fmt.Sprint(got) != fmt.Sprint(want) {
						t.Errorf("found %v, want %v", got, want)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	})
}

// TestWriterRoom: a room read in a write transaction is read once; what
// the transaction writes of it is what it reads next, and a caller
// changing the copy it got changes nothing else.
func TestWriterRoom(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db := sqldbtest.Open(t, dbURL)
		s, err := Open(ctx, db, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Write(ctx, func(w *Writer) error {
			if _, err := w.Room(ctx, "!r:test"); err != ErrNotFound {
				t.Errorf("unknown room: %v, want ErrNotFound", err)
			}
			r, err := w.CreateRoom(ctx, "!r:test", "10")
			if err != nil {
				return err
			}
			r.Latest, r.Snapshot, r.MaxDepth = []int64{7}, 3, 5
			if err := w.UpdateRoom(ctx, r); err != nil {
				return err
			}
			r.Latest[0] = 99 // the caller's copy only
			got, err := w.Room(ctx, "!r:test")
			if err != nil {
				return err
			}
			if got.NID != r.NID || got.Snapshot != 3 || got.MaxDepth != 5 || fmt.Sprint(got.Latest) != "[7]" {
				t.Errorf("room in the transaction %+v, want the update", got)
			}
			got.Latest[0] = 98
			again, err := w.Room(ctx, "!r:test")
			if err != nil {
				return err
			}
			if fmt.Sprint(again.Latest) != "[7]" {
				t.Errorf("room after a caller changed its copy: %+v", again)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Room(ctx, "!r:test")
		if err != nil || r.Snapshot != 3 || fmt.Sprint(r.Latest) != "[7]" {
			t.Fatalf("room after the commit %+v (%v)", r, err)
		}
	})
}

// TestWriterAbsentEvents: an event looked up and not found in a write
// transaction is stored by it all the same, and found afterwards, in the
// transaction and after it.
func TestWriterAbsentEvents(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db := sqldbtest.Open(t, dbURL)
		s, err := Open(ctx, db, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		ver := gmsl.MustGetRoomVersion(gmsl.RoomVersionV10)
		b := ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
			SenderID: "@a:test", RoomID: "!r:test", Type: "m.room.message",
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: []byte(`{"body":"hi"}`),
		})
		pdu, err := b.Build(time.Now(), "test", "ed25519:k", priv)
		if err != nil {
			t.Fatal(err)
		}
		id := pdu.EventID()
		err = s.Write(ctx, func(w *Writer) error {
			r, err := w.CreateRoom(ctx, "!r:test", "10")
			if err != nil {
				return err
			}
			for range 2 { // the second look-up is answered from memory
				if got, err := w.EventNIDs(ctx, []string{id}); err != nil || len(got) != 0 {
					t.Fatalf("unstored event found: %v (%v)", got, err)
				}
			}
			ev := &Event{RoomNID: r.NID, ID: id, PDU: pdu}
			if stored, err := w.StoreEvent(ctx, ev, 1); err != nil || !stored {
				t.Fatalf("event looked up before not stored: %v (%v)", stored, err)
			}
			if got, err := w.EventNIDs(ctx, []string{id}); err != nil || got[id] != ev.NID {
				t.Fatalf("stored event looked up: %v (%v), want NID %d", got, err, ev.NID)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.EventNIDs(ctx, []string{id}); err != nil || len(got) != 1 {
			t.Fatalf("after the commit: %v (%v)", got, err)
		}
	})
}
