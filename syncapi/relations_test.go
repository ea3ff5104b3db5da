package syncapi_test

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

const v1 = "/_matrix/client/v1"

// roomClient sends events to one room as one user.
type roomClient struct {
	t    *testing.T
	c    *testserver.Client
	room string
	n    *int
}

func (rc roomClient) send(evType string, content map[string]any) string {
	rc.t.Helper()
	*rc.n++
	return rc.c.Do(rc.t, "PUT", fmt.Sprintf("%s/rooms/%s/send/%s/txn%d", v3, url.PathEscape(rc.room), evType, *rc.n), content).MustOK(rc.t).String("event_id")
}

func (rc roomClient) text(body string) string {
	return rc.send("m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

func (rc roomClient) rel(relType, parent, body string) string {
	return rc.send("m.room.message", map[string]any{"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": relType, "event_id": parent}})
}

func (rc roomClient) edit(parent, body string) string {
	return rc.send("m.room.message", map[string]any{"msgtype": "m.text", "body": "* " + body,
		"m.new_content": map[string]any{"msgtype": "m.text", "body": body},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": parent}})
}

// get fetches path and returns its body for gjson, failing unless 200.
func get(t *testing.T, c *testserver.Client, path string) gjson.Result {
	t.Helper()
	return gjson.ParseBytes(c.Do(t, "GET", path, nil).MustOK(t).Raw)
}

func ids(r gjson.Result) []string {
	var out []string
	for _, e := range r.Array() {
		out = append(out, e.Get("event_id").String())
	}
	return out
}

// latestEdit is the edit the spec says is bundled: the largest
// origin_server_ts, then the largest event ID.
func latestEdit(t *testing.T, c *testserver.Client, room string, edits ...string) string {
	t.Helper()
	best, bestTS := "", int64(-1)
	for _, id := range edits {
		ts := get(t, c, v3+"/rooms/"+url.PathEscape(room)+"/event/"+url.PathEscape(id)).Get("origin_server_ts").Int()
		if ts > bestTS || (ts == bestTS && id > best) {
			best, bestTS = id, ts
		}
	}
	return best
}

// TestRelations drives /relations, /threads and the bundled aggregations
// of /event, /messages, /context and /sync over HTTP: edits (the latest
// valid one, other senders' ignored, redactions undoing them), threads
// (count, latest event with its own edit, participation), references,
// paging both ways with tokens of /relations and /sync, recursion,
// history visibility and bad input.
func TestRelations(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		carol := srv.Register(t, "carol")
		room := alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", v3+"/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
		n := 0
		a := roomClient{t, alice, room, &n}
		b := roomClient{t, bob, room, &n}
		er := url.PathEscape(room)

		root := a.text("root")
		edit1 := a.edit(root, "root v2")
		edit2 := a.edit(root, "root v3")
		bobEdit := b.edit(root, "not yours") // another sender: no edit
		t1 := b.rel("m.thread", root, "in thread from bob")
		t2 := a.rel("m.thread", root, "in thread from alice")
		t2Edit := a.edit(t2, "in thread, edited")
		ref := b.rel("m.reference", root, "see above")
		reaction := b.send("m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👍"}})
		children := []string{reaction, ref, t2, t1, bobEdit, edit2, edit1} // newest first
		wantEdit := latestEdit(t, alice, room, edit1, edit2)

		rootEv := get(t, alice, v3+"/rooms/"+er+"/event/"+url.PathEscape(root))
		rels := rootEv.Get(`unsigned.m\.relations`)
		if got := rels.Get(`m\.replace.event_id`).String(); got != wantEdit {
			t.Fatalf("m.replace of /event = %q, want %q: %s", got, wantEdit, rootEv.Raw)
		}
		if rootEv.Get("content.body").String() != "root" {
			t.Fatalf("the original's content changed: %s", rootEv.Raw)
		}
		th := rels.Get(`m\.thread`)
		if th.Get("count").Int() != 2 || th.Get("latest_event.event_id").String() != t2 || !th.Get("current_user_participated").Bool() {
			t.Fatalf("m.thread of /event: %s", th.Raw)
		}
		if got := th.Get(`latest_event.unsigned.m\.relations.m\.replace.event_id`).String(); got != t2Edit {
			t.Fatalf("the thread's latest event lacks its edit: %s", th.Raw)
		}
		if got := ids(rels.Get(`m\.reference.chunk`)); !slices.Equal(got, []string{ref}) {
			t.Fatalf("m.reference = %v, want [%s]", got, ref)
		}
		// carol never sent to the thread nor started it.
		carol.Do(t, "POST", v3+"/join/"+er, map[string]any{}).MustOK(t)
		if get(t, carol, v3+"/rooms/"+er+"/event/"+url.PathEscape(root)).Get(`unsigned.m\.relations.m\.thread.current_user_participated`).Bool() {
			t.Fatal("carol participated in a thread she never wrote in")
		}
		// An event without children has no m.relations.
		if get(t, alice, v3+"/rooms/"+er+"/event/"+url.PathEscape(ref)).Get(`unsigned.m\.relations`).Exists() {
			t.Fatal("an event without children has m.relations")
		}

		relPath := v1 + "/rooms/" + er + "/relations/" + url.PathEscape(root)
		t.Run("relations pages backwards and forwards", func(t *testing.T) {
			var got []string
			from := ""
			for page := 0; page < 10; page++ {
				r := get(t, bob, relPath+"?limit=3"+from)
				if page > 0 && r.Get("prev_batch").String() == "" {
					t.Fatalf("page %d has no prev_batch: %s", page, r.Raw)
				}
				if r.Get("recursion_depth").Exists() {
					t.Fatalf("recursion_depth without recurse: %s", r.Raw)
				}
				got = append(got, ids(r.Get("chunk"))...)
				nb := r.Get("next_batch").String()
				if nb == "" {
					break
				}
				from = "&from=" + url.QueryEscape(nb)
			}
			if !slices.Equal(got, children) {
				t.Fatalf("children backwards = %v, want %v", got, children)
			}
			fwd := ids(get(t, bob, relPath+"?dir=f&limit=50").Get("chunk"))
			want := slices.Clone(children)
			slices.Reverse(want)
			if !slices.Equal(fwd, want) {
				t.Fatalf("children forwards = %v, want %v", fwd, want)
			}
			// A /sync token is a starting point too.
			next := get(t, bob, v3+"/sync?timeout=0").Get("next_batch").String()
			if got := ids(get(t, bob, relPath+"?limit=50&from="+url.QueryEscape(next)).Get("chunk")); !slices.Equal(got, children) {
				t.Fatalf("children from a sync token = %v", got)
			}
			// 'to' stops at a token of an earlier page.
			first := get(t, bob, relPath+"?limit=2")
			if got := ids(get(t, bob, relPath+"?limit=50&to="+url.QueryEscape(first.Get("next_batch").String())).Get("chunk")); !slices.Equal(got, children[:2]) {
				t.Fatalf("children up to the first page's end = %v, want %v", got, children[:2])
			}
		})
		t.Run("relations filtered by rel_type and event type", func(t *testing.T) {
			if got := ids(get(t, bob, relPath+"/m.thread").Get("chunk")); !slices.Equal(got, []string{t2, t1}) {
				t.Fatalf("m.thread children = %v", got)
			}
			if got := ids(get(t, bob, relPath+"/m.annotation/m.reaction").Get("chunk")); !slices.Equal(got, []string{reaction}) {
				t.Fatalf("m.reaction annotations = %v", got)
			}
			if got := get(t, bob, relPath+"/m.annotation/m.room.message").Get("chunk").Array(); len(got) != 0 {
				t.Fatalf("no message annotates root, got %v", got)
			}
			// Each child carries its own aggregations.
			r := get(t, bob, relPath+"/m.thread?limit=1")
			if got := r.Get(`chunk.0.unsigned.m\.relations.m\.replace.event_id`).String(); got != t2Edit {
				t.Fatalf("thread child lacks its edit: %s", r.Raw)
			}
		})
		t.Run("recursion", func(t *testing.T) {
			r := get(t, bob, relPath+"?recurse=true&limit=50")
			if r.Get("recursion_depth").Int() != 3 {
				t.Fatalf("recursion_depth: %s", r.Raw)
			}
			want := []string{reaction, ref, t2Edit, t2, t1, bobEdit, edit2, edit1}
			if got := ids(r.Get("chunk")); !slices.Equal(got, want) {
				t.Fatalf("recursive children = %v, want %v", got, want)
			}
			// A matching event related only through a non-matching one
			// is left out: t2Edit relates to a thread event.
			if got := ids(get(t, bob, relPath+"/m.replace?recurse=true").Get("chunk")); !slices.Equal(got, []string{bobEdit, edit2, edit1}) {
				t.Fatalf("recursive m.replace = %v", got)
			}
		})
		t.Run("bundled everywhere", func(t *testing.T) {
			msgs := get(t, alice, v3+"/rooms/"+er+"/messages?dir=b&limit=50")
			found := false
			for _, e := range msgs.Get("chunk").Array() {
				if e.Get("event_id").String() == root {
					found = true
					if e.Get(`unsigned.m\.relations.m\.replace.event_id`).String() != wantEdit || e.Get(`unsigned.m\.relations.m\.thread.count`).Int() != 2 {
						t.Fatalf("/messages root: %s", e.Raw)
					}
				}
			}
			if !found {
				t.Fatal("root not in /messages")
			}
			c := get(t, alice, v3+"/rooms/"+er+"/context/"+url.PathEscape(root)+"?limit=12")
			if c.Get(`event.unsigned.m\.relations.m\.replace.event_id`).String() != wantEdit {
				t.Fatalf("/context event: %s", c.Get("event").Raw)
			}
			if c.Get(`events_after.#(event_id=="`+t2+`").unsigned.m\.relations.m\.replace.event_id`).String() != t2Edit {
				t.Fatalf("/context events_after lack t2's edit: %s", c.Get("events_after").Raw)
			}
			// A limited sync timeline bundles; the state events of the
			// room's creation make this one limited.
			filter := url.QueryEscape(fmt.Sprintf(`{"room":{"rooms":[%q],"timeline":{"limit":11}}}`, room))
			s := get(t, alice, v3+"/sync?timeout=0&filter="+filter)
			tl := s.Get("rooms.join." + gjson.Escape(room) + ".timeline")
			if !tl.Get("limited").Bool() {
				t.Fatalf("timeline not limited: %s", tl.Raw)
			}
			if tl.Get(`events.#(event_id=="`+root+`").unsigned.m\.relations.m\.replace.event_id`).String() != wantEdit {
				t.Fatalf("sync timeline root lacks its edit: %s", tl.Raw)
			}
			// Several rooms' limited timelines are aggregated together.
			room2 := alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			r2 := roomClient{t, alice, room2, &n}
			root2 := r2.text("root 2")
			edit21 := r2.edit(root2, "root 2, edited")
			r2.text("after")
			filter = url.QueryEscape(fmt.Sprintf(`{"room":{"rooms":[%q, %q],"timeline":{"limit":3}}}`, room, room2))
			s = get(t, alice, v3+"/sync?timeout=0&filter="+filter)
			tl2 := s.Get("rooms.join." + gjson.Escape(room2) + ".timeline")
			if !tl2.Get("limited").Bool() || tl2.Get(`events.#(event_id=="`+root2+`").unsigned.m\.relations.m\.replace.event_id`).String() != edit21 {
				t.Fatalf("second room's limited timeline lacks its edit: %s", tl2.Raw)
			}
			if !s.Get("rooms.join." + gjson.Escape(room) + ".timeline.limited").Bool() {
				t.Fatalf("first room's timeline not limited: %s", s.Raw)
			}
		})
		t.Run("threads", func(t *testing.T) {
			root2 := a.text("second root")
			a.rel("m.thread", root2, "busy thread")
			all := get(t, bob, v1+"/rooms/"+er+"/threads")
			if got := ids(all.Get("chunk")); !slices.Equal(got, []string{root2, root}) {
				t.Fatalf("threads = %v, want [%s %s]", got, root2, root)
			}
			if all.Get(`chunk.1.unsigned.m\.relations.m\.thread.count`).Int() != 2 {
				t.Fatalf("thread roots lack their summary: %s", all.Raw)
			}
			if got := ids(get(t, bob, v1+"/rooms/"+er+"/threads?include=participated").Get("chunk")); !slices.Equal(got, []string{root}) {
				t.Fatalf("bob's threads = %v, want [%s]", got, root)
			}
			p1 := get(t, bob, v1+"/rooms/"+er+"/threads?limit=1")
			p2 := get(t, bob, v1+"/rooms/"+er+"/threads?limit=1&from="+url.QueryEscape(p1.Get("next_batch").String()))
			if got := append(ids(p1.Get("chunk")), ids(p2.Get("chunk"))...); !slices.Equal(got, []string{root2, root}) {
				t.Fatalf("paged threads = %v: %s %s", got, p1.Raw, p2.Raw)
			}
		})
		t.Run("redactions", func(t *testing.T) {
			alice.Do(t, "PUT", v3+"/rooms/"+er+"/redact/"+url.PathEscape(wantEdit)+"/r1", map[string]any{}).MustOK(t)
			other := edit1
			if wantEdit == edit1 {
				other = edit2
			}
			if got := get(t, alice, v3+"/rooms/"+er+"/event/"+url.PathEscape(root)).Get(`unsigned.m\.relations.m\.replace.event_id`).String(); got != other {
				t.Fatalf("after redacting the latest edit, m.replace = %q, want %q", got, other)
			}
			if got := ids(get(t, bob, relPath+"/m.replace").Get("chunk")); slices.Contains(got, wantEdit) {
				t.Fatalf("a redacted edit is still a child: %v", got)
			}
			alice.Do(t, "PUT", v3+"/rooms/"+er+"/redact/"+url.PathEscape(root)+"/r2", map[string]any{}).MustOK(t)
			r := get(t, alice, v3+"/rooms/"+er+"/event/"+url.PathEscape(root))
			if r.Get(`unsigned.m\.relations.m\.replace`).Exists() {
				t.Fatalf("a redacted original has its edit bundled: %s", r.Raw)
			}
			if r.Get(`unsigned.m\.relations.m\.thread.count`).Int() != 2 {
				t.Fatalf("a redacted root lost its thread: %s", r.Raw)
			}
		})
		t.Run("visibility", func(t *testing.T) {
			// A room whose history is for members from their join: dave
			// joins after the parent and cannot see it.
			dave := srv.Register(t, "dave")
			priv := alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat", "initial_state": []any{
				map[string]any{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}},
			}}).MustOK(t).String("room_id")
			pc := roomClient{t, alice, priv, &n}
			old := pc.text("before dave")
			pc.rel("m.thread", old, "reply before dave")
			dave.Do(t, "POST", v3+"/join/"+url.PathEscape(priv), map[string]any{}).MustOK(t)
			pc.rel("m.thread", old, "reply after dave")
			r := dave.Do(t, "GET", v1+"/rooms/"+url.PathEscape(priv)+"/relations/"+url.PathEscape(old), nil)
			if r.Status != 404 || r.String("errcode") != "M_NOT_FOUND" {
				t.Fatalf("dave reads children of an event he cannot see: %d %s", r.Status, r.Raw)
			}
			if got := ids(get(t, dave, v1+"/rooms/"+url.PathEscape(priv)+"/threads").Get("chunk")); len(got) != 0 {
				t.Fatalf("dave sees a thread root he cannot see: %v", got)
			}
			// Carol is no member of priv at all.
			r = carol.Do(t, "GET", v1+"/rooms/"+url.PathEscape(priv)+"/relations/"+url.PathEscape(old), nil)
			if r.Status != 404 || r.String("errcode") != "M_NOT_FOUND" {
				t.Fatalf("a non-member reads relations: %d %s", r.Status, r.Raw)
			}
			if r := carol.Do(t, "GET", v1+"/rooms/"+url.PathEscape(priv)+"/threads", nil); r.Status != 403 {
				t.Fatalf("a non-member lists threads: %d %s", r.Status, r.Raw)
			}
			// An event of another room is not found through this one.
			if r := alice.Do(t, "GET", v1+"/rooms/"+url.PathEscape(priv)+"/relations/"+url.PathEscape(ref), nil); r.Status != 404 {
				t.Fatalf("an event of another room: %d %s", r.Status, r.Raw)
			}
		})
		t.Run("bad input", func(t *testing.T) {
			tests := []struct {
				name, path string
				status     int
				errcode    string
			}{
				{"bad dir", relPath + "?dir=x", 400, "M_INVALID_PARAM"},
				{"negative limit", relPath + "?limit=-1", 400, "M_INVALID_PARAM"},
				{"limit not a number", relPath + "?limit=ten", 400, "M_INVALID_PARAM"},
				{"bad recurse", relPath + "?recurse=maybe", 400, "M_INVALID_PARAM"},
				{"bad from", relPath + "?from=nonsense", 400, "M_INVALID_PARAM"},
				{"bad to", relPath + "?to=nonsense", 400, "M_INVALID_PARAM"},
				{"unknown event", v1 + "/rooms/" + er + "/relations/" + url.PathEscape("$"+strings.Repeat("a", 43)), 404, "M_NOT_FOUND"},
				{"malformed event ID", v1 + "/rooms/" + er + "/relations/nope", 400, "M_INVALID_PARAM"},
				{"malformed room ID", v1 + "/rooms/nope/relations/" + url.PathEscape(root), 400, "M_INVALID_PARAM"},
				{"unknown room", v1 + "/rooms/" + url.PathEscape("!nope:localhost") + "/relations/" + url.PathEscape(root), 404, "M_NOT_FOUND"},
				{"threads: bad include", v1 + "/rooms/" + er + "/threads?include=some", 400, "M_INVALID_PARAM"},
				{"threads: zero limit", v1 + "/rooms/" + er + "/threads?limit=0", 400, "M_INVALID_PARAM"},
				{"threads: bad from", v1 + "/rooms/" + er + "/threads?from=t1_2", 400, "M_INVALID_PARAM"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					r := bob.Do(t, "GET", tc.path, nil)
					if r.Status != tc.status || r.String("errcode") != tc.errcode {
						t.Fatalf("GET %s: %d %s, want %d %s", tc.path, r.Status, r.Raw, tc.status, tc.errcode)
					}
				})
			}
			anon := &testserver.Client{Base: srv.URL}
			if r := anon.Do(t, "GET", relPath, nil); r.Status != 401 {
				t.Fatalf("no token: %d %s", r.Status, r.Raw)
			}
		})
	})
}

// TestUnsignedMembership: every event served carries the requesting
// user's membership at it, the event's own change included (MSC4115):
// leave before the user joined, join while joined, leave at its leave.
func TestUnsignedMembership(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		room := alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		er := url.PathEscape(room)
		n := 0
		a := roomClient{t, alice, room, &n}
		before := a.text("before bob")
		bob.Do(t, "POST", v3+"/join/"+er, map[string]any{}).MustOK(t)
		during := roomClient{t, bob, room, &n}.text("bob was here")
		thread := a.rel("m.thread", before, "thread reply")
		bob.Do(t, "POST", v3+"/rooms/"+er+"/leave", map[string]any{}).MustOK(t)

		want := map[string]string{before: "leave", during: "join", thread: "join"}
		msgs := get(t, bob, v3+"/rooms/"+er+"/messages?dir=b&limit=50").Get("chunk").Array()
		seen := 0
		for _, e := range msgs {
			id, m := e.Get("event_id").String(), e.Get("unsigned.membership").String()
			if w, ok := want[id]; ok {
				seen++
				if m != w {
					t.Errorf("membership at %s = %q, want %q", id, m, w)
				}
			}
			if e.Get("type").String() == "m.room.member" && e.Get("state_key").String() == "@bob:localhost" {
				if w := e.Get("content.membership").String(); m != w {
					t.Errorf("membership at bob's own %s = %q, want %q (the event's change included)", w, m, w)
				}
			}
			if m == "" {
				t.Errorf("event without unsigned.membership: %s", e.Raw)
			}
		}
		if seen != len(want) {
			t.Fatalf("bob's /messages lacks events: %d of %d", seen, len(want))
		}
		ev := get(t, bob, v3+"/rooms/"+er+"/event/"+url.PathEscape(before))
		if ev.Get("unsigned.membership").String() != "leave" {
			t.Fatalf("/event: %s", ev.Raw)
		}
		if got := ev.Get(`unsigned.m\.relations.m\.thread.latest_event.unsigned.membership`).String(); got != "join" {
			t.Fatalf("the thread's latest event: membership %q: %s", got, ev.Raw)
		}
		s := get(t, alice, v3+"/sync?timeout=0")
		for _, e := range s.Get("rooms.join." + gjson.Escape(room) + ".timeline.events").Array() {
			if e.Get("unsigned.membership").String() != "join" && e.Get("type").String() != "m.room.create" {
				t.Fatalf("alice's sync timeline: %s", e.Raw)
			}
		}
	})
}
