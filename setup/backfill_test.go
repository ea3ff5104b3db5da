package setup_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// backfillPage is what one /messages page shows of a room's history: a
// label per message ("msg 3") and topic change ("topic 3") in the order
// served, whether it held the create event, and the next token.
type backfillPage struct {
	labels []string
	create bool
	n      int
	end    string
}

func messagesPage(t *testing.T, c *testserver.Client, roomID, from string, limit int) backfillPage {
	t.Helper()
	q := url.Values{"dir": {"b"}, "limit": {fmt.Sprint(limit)}}
	if from != "" {
		q.Set("from", from)
	}
	r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil).MustOK(t)
	var body struct {
		End   string `json:"end"`
		Chunk []struct {
			Type    string `json:"type"`
			Content struct {
				Body  string `json:"body"`
				Topic string `json:"topic"`
			} `json:"content"`
		} `json:"chunk"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	p := backfillPage{end: body.End, n: len(body.Chunk)}
	for _, e := range body.Chunk {
		switch e.Type {
		case "m.room.message":
			p.labels = append(p.labels, e.Content.Body)
		case "m.room.topic":
			p.labels = append(p.labels, e.Content.Topic)
		case "m.room.create":
			p.create = true
		}
	}
	return p
}

// pageBack pages /messages backwards from 'from' until the end and
// returns the labels read, whether the create event came, and the pages.
func pageBack(t *testing.T, c *testserver.Client, roomID, from string, limit int) (labels []string, create bool, pages int) {
	t.Helper()
	for ; pages < 40; pages++ {
		p := messagesPage(t, c, roomID, from, limit)
		labels = append(labels, p.labels...)
		create = create || p.create
		if p.end == "" || p.n == 0 {
			break
		}
		from = p.end
	}
	return labels, create, pages
}

// TestFederationBackfill: a user of hsb joins a room of hsa that already
// has history; paging /messages backwards on hsb fetches that history
// from hsa (GET /backfill), batch after batch and page after page, in
// order, down to the create event; with history visibility "joined" hsa
// serves none of it (hsb had no member then) and hsb shows none.
// The backfilled events change neither the room's current state on hsb
// nor its /sync (they are history, not news).
func TestFederationBackfill(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		const n = 60
		cases := []struct {
			visibility  string
			wantHistory bool
		}{
			{"shared", true},
			{"joined", false},
		}
		for _, tc := range cases {
			t.Run(tc.visibility, func(t *testing.T) {
				bob := hsB.Register(t, "bob_"+tc.visibility)
				roomID := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
					"preset": "public_chat",
					"initial_state": []map[string]any{{
						"type": "m.room.history_visibility", "state_key": "",
						"content": map[string]string{"history_visibility": tc.visibility},
					}},
				}).MustOK(t).String("room_id")
				var want []string // oldest first
				for i := 0; i < n; i++ {
					body := fmt.Sprintf("msg %d", i)
					alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+fmt.Sprint(i),
						map[string]string{"msgtype": "m.text", "body": body}).MustOK(t)
					want = append(want, body)
					if i%5 == 0 {
						topic := fmt.Sprintf("topic %d", i)
						alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.topic/",
							map[string]string{"topic": topic}).MustOK(t)
						want = append(want, topic)
					}
				}
				slices.Reverse(want) // /messages backwards: newest first

				bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
				// As a client does: page back from the timeline's start in
				// bob's first sync, which holds only his join.
				r := bob.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
				var first struct {
					NextBatch string `json:"next_batch"`
					Rooms     struct {
						Join map[string]struct {
							Timeline struct {
								PrevBatch string `json:"prev_batch"`
							} `json:"timeline"`
						} `json:"join"`
					} `json:"rooms"`
				}
				if err := json.Unmarshal(r.Raw, &first); err != nil {
					t.Fatal(err)
				}
				since, from := first.NextBatch, first.Rooms.Join[roomID].Timeline.PrevBatch
				if from == "" {
					t.Fatalf("no prev_batch for the room in bob's sync: %s", r.Raw)
				}

				got, sawCreate, pages := pageBack(t, bob, roomID, from, 7)
				if tc.wantHistory {
					if !sawCreate {
						t.Fatalf("paging back never reached the create event (%d pages, got %v)", pages, got)
					}
					if !slices.Equal(got, want) {
						t.Fatalf("history on hsb:\n got %v\nwant %v", got, want)
					}
					if pages < 3 {
						t.Fatalf("history came in %d pages of 7, want several", pages)
					}
				} else if len(got) > 0 {
					t.Fatalf("history visibility joined: hsb shows %v from before the join", got)
				}

				// Read again, all of it is here now, once.
				if again, _, _ := pageBack(t, bob, roomID, from, 7); !slices.Equal(again, got) {
					t.Fatalf("history read again:\n got %v\nwant %v", again, got)
				}

				// History is not news: no sync since the join shows it,
				// and the room's current state is still the latest.
				r = bob.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).MustOK(t)
				if strings.Contains(string(r.Raw), "msg ") || strings.Contains(string(r.Raw), "topic ") {
					t.Fatalf("an incremental sync shows backfilled events: %s", r.Raw)
				}
				topic := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.topic/", nil).MustOK(t).String("topic")
				if want := fmt.Sprintf("topic %d", (n-1)/5*5); topic != want {
					t.Fatalf("topic on hsb after backfill: %q, want %q", topic, want)
				}
				// The room goes on after its history: a new message reaches
				// hsb (/send) and is the newest there.
				alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/after",
					map[string]string{"msgtype": "m.text", "body": "msg after"}).MustOK(t)
				poll.Until(t, 10*time.Second, func() error {
					if p := messagesPage(t, bob, roomID, "", 1); len(p.labels) != 1 || p.labels[0] != "msg after" {
						return fmt.Errorf("newest on hsb: %v", p.labels)
					}
					return nil
				})
			})
		}
	})
}

// TestFederationBackfillGap: hsb is down while a room of hsa goes on; when
// it is back, paging /messages backwards on hsb shows every event, in
// order, down to what it had before, and nothing twice. A short outage
// leaves no gap (hsa's queue keeps every event for hsb); after a long one
// (past the queue's catch-up point) hsb gets only the latest event and a
// gap stays in its history, which /messages fills from hsa's /backfill
// before paging past it: sytest's "Backfilled events whose prev_events
// are in a different room do not allow cross-room back-pagination" makes
// such a gap and checks that.
func TestFederationBackfillGap(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		roomID := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		send := func(body string) {
			alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(body),
				map[string]string{"msgtype": "m.text", "body": body}).MustOK(t)
		}
		send("before")
		poll.Until(t, 10*time.Second, func() error {
			if p := messagesPage(t, bob, roomID, "", 1); len(p.labels) != 1 || p.labels[0] != "before" {
				return fmt.Errorf("newest on hsb: %v", p.labels)
			}
			return nil
		})

		hsB.Stop()
		var want []string // newest first, as /messages pages back
		const n = 45
		for i := 0; i < n; i++ {
			body := fmt.Sprintf("while down %d", i)
			send(body)
			want = append([]string{body}, want...)
		}
		hsB = fed.restart(t, "hsb.test", "127.0.0.5", hsB)
		bob.Base = hsB.URL
		send("after")
		want = append([]string{"after"}, want...)
		want = append(want, "before")
		// hsa may wait out a retry backoff before it sends again; a new
		// event each round lets it know hsb is back sooner.
		nudges := 0
		poll.Until(t, 60*time.Second, func() error {
			if p := messagesPage(t, bob, roomID, "", 1); len(p.labels) != 1 || (p.labels[0] != "after" && !strings.HasPrefix(p.labels[0], "nudge")) {
				nudges++
				send(fmt.Sprintf("nudge %d", nudges))
				return fmt.Errorf("newest on hsb: %v", p.labels)
			}
			return nil
		})
		got, _, _ := pageBack(t, bob, roomID, "", 10)
		var clean []string
		for _, l := range got {
			if !strings.HasPrefix(l, "nudge") {
				clean = append(clean, l)
			}
		}
		if !slices.Equal(clean, want) {
			t.Fatalf("history on hsb across the gap:\n got %v\nwant %v", clean, want)
		}
	})
}
