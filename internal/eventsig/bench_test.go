package eventsig

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
)

// BenchmarkVerifyAll checks the signatures of a transaction's worth of
// events (50), fanned out and one after the other.
func BenchmarkVerifyAll(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	ring := keys{"good.test": pub}
	ver := gmsl.MustGetRoomVersion(gmsl.RoomVersionV10)
	evs := make([]gmsl.PDU, 50)
	for i := range evs {
		bld := ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
			SenderID: "@alice:good.test", RoomID: "!r:good.test", Type: "m.room.message",
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: int64(i + 1),
		})
		if err := bld.SetContent(map[string]any{"body": "a message of a usual length, some words long", "msgtype": "m.text"}); err != nil {
			b.Fatal(err)
		}
		ev, err := bld.Build(time.Now(), "good.test", keyID, priv)
		if err != nil {
			b.Fatal(err)
		}
		evs[i] = ev
	}
	ctx := context.Background()
	b.Run("fanned out", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, err := range VerifyAll(ctx, evs, ring) {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("one after the other", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, ev := range evs {
				if err := Verify(ctx, ev, ring); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
