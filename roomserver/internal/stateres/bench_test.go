package stateres

import (
	"context"
	"fmt"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// bigRoomFork makes a room of members joined users and two forks: on one an
// admin changes the power levels and topic and kicks a member, on the other
// a moderator bans another member and new users join.
func bigRoomFork(b *testing.B, ver gmsl.RoomVersion, members int) (*testRoom, []StateSet) {
	r := newTestRoom(b, ver)
	s := r.initial(map[string]int64{bob: 50})
	for i := 0; i < members; i++ {
		u := user(fmt.Sprintf("m%05d", i))
		r.sendInPlace("JOIN", s, u, spec.MRoomMember, u, member("join"))
	}
	f1, f2 := s, s
	_, f1 = r.send("PL", f1, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 0}))
	_, f1 = r.send("TOPIC", f1, alice, spec.MRoomTopic, "", topic("a"))
	_, f1 = r.send("KICK", f1, alice, spec.MRoomMember, user("m00001"), member("leave"))
	_, f2 = r.send("BAN", f2, bob, spec.MRoomMember, user("m00002"), member("ban"))
	for i := 0; i < 10; i++ {
		u := user(fmt.Sprintf("new%d", i))
		_, f2 = r.send("NEWJOIN", f2, u, spec.MRoomMember, u, member("join"))
	}
	return r, []StateSet{f1, f2}
}

// BenchmarkResolveBigRoom resolves a fork of a 10,000-member room; the
// events come from memory, so this is the algorithm's own cost.
func BenchmarkResolveBigRoom(b *testing.B) {
	for _, ver := range []gmsl.RoomVersion{gmsl.RoomVersionV11, gmsl.RoomVersionV12} {
		b.Run("v"+string(ver), func(b *testing.B) {
			r, forks := bigRoomFork(b, ver, 10_000)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := Resolve(context.Background(), Params{Version: ver, StateSets: forks, Load: r.load})
				if err != nil {
					b.Fatal(err)
				}
				if d := r.describe(res); d[key(spec.MRoomMember, user("m00002"))] != "JOIN" || d[key(spec.MRoomPowerLevels, "")] != "PL" {
					b.Fatalf("bob's ban after his demotion passed: %v", d[key(spec.MRoomMember, user("m00002"))])
				}
			}
		})
	}
	b.Run("gmsl-v11", func(b *testing.B) {
		r, forks := bigRoomFork(b, gmsl.RoomVersionV11, 10_000)
		sets := [][]gmsl.PDU{stateList(forks[0]), stateList(forks[1])}
		all := stateList(r.allEvents())
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := gmsl.ResolveConflictsNew(gmsl.RoomVersionV11, sets, all, senderIsUserID, func(string) bool { return false }); err != nil {
				b.Fatal(err)
			}
		}
	})
}
