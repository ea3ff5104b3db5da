package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
)

// inputRooms stands in for the roomserver's input: the one room it knows
// takes PDUs unless it is busy (Unavailable, as the roomserver answers
// when it cannot store now) or the PDU is one it refuses. What the rest
// of the pipeline does with a real roomserver is tested in setup.
type inputRooms struct {
	MemberRooms
	room    string
	mu      sync.Mutex
	busy    bool
	refuse  map[string]bool
	batches [][]string // the event IDs of each input request
}

// CurrentState answers the state the policy reads (pduPolicy): the room
// has no server ACL.
func (r *inputRooms) CurrentState(context.Context, string, ...gmsl.StateKeyTuple) ([]gmsl.PDU, error) {
	return nil, nil
}

func (r *inputRooms) RoomVersion(_ context.Context, roomID string) (gmsl.RoomVersion, error) {
	if roomID != r.room {
		return "", rsapi.ErrRoomNotFound
	}
	return gmsl.RoomVersionV10, nil
}

func (r *inputRooms) Input(_ context.Context, req *rsapi.InputRequest) (*rsapi.InputResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, e := range req.Events {
		ev, err := gmsl.MustGetRoomVersion(gmsl.RoomVersionV10).NewEventFromUntrustedJSON(e.PDU)
		if err != nil {
			return nil, err
		}
		ids = append(ids, ev.EventID())
	}
	r.batches = append(r.batches, ids)
	resp := &rsapi.InputResponse{RoomID: req.RoomID}
	switch {
	case r.busy:
		resp.Error, resp.Unavailable = "too busy", true
	default:
		for i, id := range ids {
			if r.refuse[id] {
				resp.Error, resp.ErrCode, resp.ErrIndex = "refused "+id, "M_FORBIDDEN", i
				break
			}
			resp.EventIDs = append(resp.EventIDs, id)
		}
	}
	return resp, resp.Err()
}

func (r *inputRooms) inputs() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]string(nil), r.batches...)
}

// TestSendInput: how /send answers what the roomserver's input says. Busy:
// 503, nothing recorded, so the retry of the same transaction is
// processed; one PDU refused: the others of its room still go in, each
// with its own result, in as few requests as the refusals allow.
func TestSendInput(t *testing.T) {
	for _, dialect := range []string{"sqlite", "postgres"} {
		t.Run(dialect, func(t *testing.T) {
			p := newFedPair(t, dialect, nil)
			rooms := &inputRooms{room: "!room:recv.test", refuse: map[string]bool{}}
			p.recv.ServeRooms(rooms)
			sender := "@u:" + string(p.originName)
			prev := "$start"
			msg := func(body string) gmsl.PDU {
				content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
				ev, err := gmsl.MustGetRoomVersion(gmsl.RoomVersionV10).NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
					SenderID: sender, RoomID: rooms.room, Type: "m.room.message", Content: content,
					PrevEvents: []string{prev}, AuthEvents: []string{"$create"}, Depth: 5,
				}).Build(time.Now(), p.originName, p.origin.key.KeyID, p.origin.key.Private)
				if err != nil {
					t.Fatal(err)
				}
				prev = ev.EventID()
				return ev
			}
			send := func(txnID string, evs ...gmsl.PDU) (int, map[string]any) {
				pdus := make([]json.RawMessage, len(evs))
				for i, ev := range evs {
					pdus[i] = ev.JSON()
				}
				return p.send(t, signedReq{
					method: "PUT", uri: "/_matrix/federation/v1/send/" + txnID,
					content: map[string]any{"origin": p.originName, "origin_server_ts": 1, "pdus": pdus},
					origin:  p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
				}, nil)
			}
			results := func(body map[string]any) map[string]string {
				out := map[string]string{}
				pdus, _ := body["pdus"].(map[string]any)
				for id, r := range pdus {
					e, _ := r.(map[string]any)["error"].(string)
					out[id] = e
				}
				return out
			}

			t.Run("busy: 503, not recorded, processed on retry", func(t *testing.T) {
				ev := msg("busy")
				rooms.mu.Lock()
				rooms.busy = true
				rooms.mu.Unlock()
				if code, body := send("busy", ev); code != 503 {
					t.Fatalf("busy roomserver: %d %v, want 503", code, body)
				}
				if resp, err := p.recv.store.InboundTxn(context.Background(), string(p.originName), "busy"); err != nil || resp != "" {
					t.Fatalf("recorded %q %v", resp, err)
				}
				rooms.mu.Lock()
				rooms.busy = false
				rooms.mu.Unlock()
				code, body := send("busy", ev)
				if r := results(body); code != 200 || len(r) != 1 || r[ev.EventID()] != "" {
					t.Fatalf("retry: %d %v", code, body)
				}
			})

			t.Run("a retry while the answer is being recorded: that answer", func(t *testing.T) {
				// The origin's turn ends with its answer, before the
				// answer is recorded: meanwhile it is kept in memory.
				key := txnKey{p.originName, "pending"}
				p.recv.in.answered(key, `{"pdus":{"$kept":{}}}`)
				defer p.recv.in.recorded(key)
				before := len(rooms.inputs())
				code, body := send("pending", msg("pending"))
				if r := results(body); code != 200 || len(r) != 1 || r["$kept"] != "" {
					t.Fatalf("%d %v, want the answer kept", code, body)
				}
				if n := len(rooms.inputs()); n != before {
					t.Fatalf("the retry was input again (%d requests)", n-before)
				}
				if _, ok := results(body)["$kept"]; !ok {
					t.Fatalf("answer %v", body)
				}
			})

			t.Run("one refused, the others in", func(t *testing.T) {
				// Siblings, none built on another.
				var evs []gmsl.PDU
				base := prev
				for _, b := range []string{"one", "two", "three"} {
					prev = base
					evs = append(evs, msg(b))
				}
				rooms.refuse[evs[1].EventID()] = true
				before := len(rooms.inputs())
				code, body := send("refused", evs...)
				r := results(body)
				if code != 200 || len(r) != 3 || r[evs[0].EventID()] != "" || r[evs[2].EventID()] != "" || r[evs[1].EventID()] == "" {
					t.Fatalf("%d %v", code, body)
				}
				// One request of the three, stored up to the refused one,
				// then one of the rest after it.
				got := fmt.Sprint(rooms.inputs()[before:])
				want := fmt.Sprint([][]string{eventIDs(evs), {evs[2].EventID()}})
				if got != want {
					t.Fatalf("inputs %s, want %s", got, want)
				}
			})

			t.Run("built on a refused one: refused without input", func(t *testing.T) {
				bad := msg("bad")
				child := msg("child of bad")
				rooms.refuse[bad.EventID()] = true
				before := len(rooms.inputs())
				code, body := send("chain", bad, child)
				r := results(body)
				if code != 200 || r[bad.EventID()] == "" || r[child.EventID()] == "" {
					t.Fatalf("%d %v", code, body)
				}
				got := fmt.Sprint(rooms.inputs()[before:])
				if want := fmt.Sprint([][]string{{bad.EventID(), child.EventID()}}); got != want {
					t.Fatalf("inputs %s, want %s", got, want)
				}
			})

			t.Run("an unknown room: an error for its PDUs", func(t *testing.T) {
				rooms.room, prev = "!other:recv.test", "$start"
				ev := msg("elsewhere")
				rooms.room = "!room:recv.test"
				code, body := send("unknown", ev)
				if r := results(body); code != 200 || r[ev.EventID()] == "" {
					t.Fatalf("%d %v", code, body)
				}
			})
		})
	}
}

// TestSendEDUs: each EDU goes to the handler of its type with the origin;
// an unknown type is ignored, and a handler's error does not fail the
// transaction.
func TestSendEDUs(t *testing.T) {
	p := newFedPair(t, "sqlite", nil)
	type got struct {
		origin  spec.ServerName
		content string
	}
	var mu sync.Mutex
	var seen []got
	p.recv.handleEDU("m.test", func(_ context.Context, origin spec.ServerName, content json.RawMessage) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, got{origin, string(content)})
		return nil
	})
	p.recv.handleEDU("m.failing", func(context.Context, spec.ServerName, json.RawMessage) error {
		return errors.New("cannot take it")
	})
	code, body := p.send(t, signedReq{
		method: "PUT", uri: "/_matrix/federation/v1/send/edus",
		content: map[string]any{"origin": p.originName, "origin_server_ts": 1, "pdus": []any{}, "edus": []any{
			map[string]any{"edu_type": "m.test", "content": map[string]int{"n": 1}},
			map[string]any{"edu_type": "m.failing", "content": map[string]int{}},
			map[string]any{"edu_type": "m.unknown", "content": map[string]int{}},
			map[string]any{"edu_type": "m.test", "content": map[string]int{"n": 2}},
		}},
		origin: p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
	}, nil)
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	want := []got{{p.originName, `{"n":1}`}, {p.originName, `{"n":2}`}}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("handled %v, want %v", seen, want)
	}
}

// TestInboundTxnRetention: a recorded response is kept (a second record
// of the same transaction does not replace it) until it is older than
// the retention, then pruned.
func TestInboundTxnRetention(t *testing.T) {
	for _, dialect := range []string{"sqlite", "postgres"} {
		t.Run(dialect, func(t *testing.T) {
			f := newAPI(t, dialect, "recv.test")
			ctx := context.Background()
			now := time.Now()
			f.now = func() time.Time { return now }
			old := now.Add(-txnRetention - time.Minute).UnixMilli()
			for _, r := range []struct {
				origin, txn, resp string
				ts                int64
			}{
				{"a.test", "old", `{"pdus":{}}`, old},
				{"a.test", "new", `{"pdus":{"$a":{}}}`, now.UnixMilli()},
				{"a.test", "new", `{"pdus":{"$b":{}}}`, now.UnixMilli()},
				{"b.test", "old", `{"pdus":{"$c":{}}}`, now.UnixMilli()},
			} {
				if err := f.store.RecordInboundTxn(ctx, r.origin, r.txn, r.resp, r.ts); err != nil {
					t.Fatal(err)
				}
			}
			f.pruneTxns(ctx, now)
			for _, c := range []struct{ origin, txn, want string }{
				{"a.test", "old", ""},
				{"a.test", "new", `{"pdus":{"$a":{}}}`},
				{"b.test", "old", `{"pdus":{"$c":{}}}`},
			} {
				got, err := f.store.InboundTxn(ctx, c.origin, c.txn)
				if err != nil || got != c.want {
					t.Errorf("%s %s: %q %v, want %q", c.origin, c.txn, got, err, c.want)
				}
			}
		})
	}
}
