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

// search posts a room_events search as c and returns the response.
func search(t *testing.T, c *testserver.Client, criteria map[string]any, nextBatch string) *testserver.Response {
	t.Helper()
	path := v3 + "/search"
	if nextBatch != "" {
		path += "?next_batch=" + url.QueryEscape(nextBatch)
	}
	return c.Do(t, "POST", path, map[string]any{"search_categories": map[string]any{"room_events": criteria}})
}

// bodies lists the bodies of a search's results, in order.
func bodies(r *testserver.Response) []string {
	var out []string
	for _, b := range gjson.GetBytes(r.Raw, "search_categories.room_events.results.#.result.content.body").Array() {
		out = append(out, b.String())
	}
	return out
}

// searchAll pages through a search with next_batch and returns the event
// IDs of every page, in order.
func searchAll(t *testing.T, c *testserver.Client, criteria map[string]any) (ids []string, pages int) {
	t.Helper()
	next := ""
	for {
		r := search(t, c, criteria, next).MustOK(t)
		pages++
		for _, id := range gjson.GetBytes(r.Raw, "search_categories.room_events.results.#.result.event_id").Array() {
			ids = append(ids, id.String())
		}
		next = gjson.GetBytes(r.Raw, "search_categories.room_events.next_batch").String()
		if next == "" {
			return ids, pages
		}
		if pages > 50 {
			t.Fatal("search pages without end")
		}
	}
}

// TestSearch: POST /search over the full-text index, through HTTP on both
// databases: rank and recent order, paging, context, groups, state,
// visibility (never joined, left, joined-only history), redaction, Unicode
// and bad input.
func TestSearch(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		r := newRoom(t, srv)
		aliceID := r.alice.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("user_id")
		bobID := r.bob.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("user_id")
		r.alice.Do(t, "PUT", v3+"/profile/"+url.PathEscape(aliceID)+"/displayname", map[string]any{"displayname": "Alice A"}).MustOK(t)

		r.send(t, r.alice, "the quick brown fox")
		foxes := r.send(t, r.bob, "fox fox fox jumps")
		r.send(t, r.alice, "a lazy dog")
		r.send(t, r.alice, "the fox sleeps")
		unicode := r.send(t, r.alice, "Ünïcode café 日本語 テスト")
		r.alice.Do(t, "PUT", r.path("/state/m.room.topic/"), map[string]any{"topic": "a room about foxes"}).MustOK(t)

		t.Run("rank", func(t *testing.T) {
			resp := search(t, r.bob, map[string]any{"search_term": "fox", "order_by": "rank"}, "").MustOK(t)
			got := bodies(resp)
			if len(got) != 3 || got[0] != "fox fox fox jumps" {
				t.Fatalf("rank order: got %q", got)
			}
			if n := gjson.GetBytes(resp.Raw, "search_categories.room_events.count").Int(); n != 4 {
				t.Errorf("count %d, want 4 (three messages and the topic)", n)
			}
			if h := gjson.GetBytes(resp.Raw, "search_categories.room_events.highlights").String(); h != `["fox"]` {
				t.Errorf("highlights %s", h)
			}
			ranks := gjson.GetBytes(resp.Raw, "search_categories.room_events.results.#.rank").Array()
			for i := 1; i < len(ranks); i++ {
				if ranks[i].Float() > ranks[i-1].Float() {
					t.Errorf("ranks not descending: %v", ranks)
				}
			}
			if id := gjson.GetBytes(resp.Raw, "search_categories.room_events.results.0.result.event_id").String(); id != foxes {
				t.Errorf("first result %s, want %s", id, foxes)
			}
		})

		t.Run("recent", func(t *testing.T) {
			resp := search(t, r.bob, map[string]any{"search_term": "fox", "order_by": "recent", "keys": []string{"content.body"}}, "").MustOK(t)
			want := []string{"the fox sleeps", "fox fox fox jumps", "the quick brown fox"}
			if got := bodies(resp); !slices.Equal(got, want) {
				t.Fatalf("recent order: got %q, want %q", got, want)
			}
		})

		t.Run("keys", func(t *testing.T) {
			resp := search(t, r.bob, map[string]any{"search_term": "foxes", "keys": []string{"content.topic"}}, "").MustOK(t)
			if topic := gjson.GetBytes(resp.Raw, "search_categories.room_events.results.0.result.content.topic").String(); topic != "a room about foxes" {
				t.Fatalf("topic search: %s", resp.Raw)
			}
			resp = search(t, r.bob, map[string]any{"search_term": "foxes", "keys": []string{"content.body"}}, "").MustOK(t)
			if got := bodies(resp); len(got) != 0 {
				t.Fatalf("body search found the topic: %q", got)
			}
		})

		t.Run("unicode", func(t *testing.T) {
			for _, term := range []string{"café", "日本語", "テスト", "Ünïcode", "日本"} {
				resp := search(t, r.bob, map[string]any{"search_term": term}, "").MustOK(t)
				if id := gjson.GetBytes(resp.Raw, "search_categories.room_events.results.0.result.event_id").String(); id != unicode {
					t.Errorf("%q: %s", term, resp.Raw)
				}
			}
			// Odd words are no error: marks alone, letters outside the BMP,
			// a word of 300 letters, keywords of the engines' syntax.
			for _, term := range []string{"\u0301", "a\u0301\u0301", "𝔘𝔫𝔦", "😀 fox", strings.Repeat("x", 300), "NEAR OR AND NOT", "fox*"} {
				search(t, r.bob, map[string]any{"search_term": term}, "").MustOK(t)
			}
			// A term of no words matches nothing, and is no error.
			resp := search(t, r.bob, map[string]any{"search_term": `"*:&|!() '`}, "").MustOK(t)
			if got := bodies(resp); len(got) != 0 {
				t.Errorf("punctuation found %q", got)
			}
		})

		t.Run("context and groups", func(t *testing.T) {
			resp := search(t, r.bob, map[string]any{
				"search_term": "lazy", "include_state": true,
				"event_context": map[string]any{"before_limit": 1, "after_limit": 1, "include_profile": true},
				"groupings":     map[string]any{"group_by": []map[string]string{{"key": "room_id"}, {"key": "sender"}}},
			}, "").MustOK(t)
			res := gjson.GetBytes(resp.Raw, "search_categories.room_events")
			c := res.Get("results.0.context")
			if b := c.Get("events_before.#.content.body").String(); b != `["fox fox fox jumps"]` {
				t.Errorf("events_before %s", b)
			}
			if a := c.Get("events_after.#.content.body").String(); a != `["the fox sleeps"]` {
				t.Errorf("events_after %s", a)
			}
			if c.Get("start").String() == "" || c.Get("end").String() == "" {
				t.Errorf("context tokens missing: %s", c.Raw)
			}
			if n := c.Get("profile_info." + gjson.Escape(aliceID) + ".displayname").String(); n != "Alice A" {
				t.Errorf("profile_info %s", c.Get("profile_info").Raw)
			}
			if !c.Get("profile_info." + gjson.Escape(bobID)).Exists() {
				t.Errorf("profile_info lacks bob (sender of events_before): %s", c.Get("profile_info").Raw)
			}
			id := res.Get("results.0.result.event_id").String()
			if g := res.Get("groups.room_id." + gjson.Escape(r.id) + ".results").String(); g != fmt.Sprintf("[%q]", id) {
				t.Errorf("room group %s", res.Get("groups").Raw)
			}
			if g := res.Get("groups.sender." + gjson.Escape(aliceID) + ".results").String(); g != fmt.Sprintf("[%q]", id) {
				t.Errorf("sender group %s", res.Get("groups").Raw)
			}
			if !slices.ContainsFunc(res.Get("state."+gjson.Escape(r.id)).Array(), func(e gjson.Result) bool { return e.Get("type").String() == "m.room.create" }) {
				t.Errorf("state lacks the create event: %s", res.Get("state").Raw)
			}
		})

		// 25 more messages to page through; every one found once, in order.
		var paged []string
		for i := range 25 {
			paged = append(paged, r.send(t, r.alice, fmt.Sprintf("paging message %d", i)))
		}
		t.Run("paging", func(t *testing.T) {
			for _, order := range []string{"recent", "rank"} {
				ids, pages := searchAll(t, r.bob, map[string]any{"search_term": "paging", "order_by": order, "filter": map[string]any{"limit": 10}})
				if pages != 3 {
					t.Errorf("%s: %d pages, want 3", order, pages)
				}
				got := slices.Clone(ids)
				slices.Sort(got)
				want := slices.Clone(paged)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Errorf("%s: paged through %d results (%v), want the %d sent", order, len(ids), ids, len(paged))
				}
				if order == "recent" {
					rev := slices.Clone(paged)
					slices.Reverse(rev)
					if !slices.Equal(ids, rev) {
						t.Errorf("recent pages out of order")
					}
				}
			}
			// A new message does not shift the pages of a search under way.
			first := search(t, r.bob, map[string]any{"search_term": "paging", "order_by": "recent", "filter": map[string]any{"limit": 10}}, "").MustOK(t)
			r.send(t, r.alice, "paging message late")
			next := gjson.GetBytes(first.Raw, "search_categories.room_events.next_batch").String()
			second := search(t, r.bob, map[string]any{"search_term": "paging", "order_by": "recent", "filter": map[string]any{"limit": 10}}, next).MustOK(t)
			if id := gjson.GetBytes(second.Raw, "search_categories.room_events.results.0.result.event_id").String(); id != paged[14] {
				t.Errorf("second page starts at %s, want %s", id, paged[14])
			}
			// Filters: senders, not_senders, rooms.
			resp := search(t, r.bob, map[string]any{"search_term": "fox", "filter": map[string]any{"senders": []string{bobID}}}, "").MustOK(t)
			if got := bodies(resp); !slices.Equal(got, []string{"fox fox fox jumps"}) {
				t.Errorf("senders filter: %q", got)
			}
			resp = search(t, r.bob, map[string]any{"search_term": "fox", "filter": map[string]any{"not_rooms": []string{r.id}}}, "").MustOK(t)
			if got := bodies(resp); len(got) != 0 {
				t.Errorf("not_rooms filter: %q", got)
			}
		})

		t.Run("redacted", func(t *testing.T) {
			id := r.send(t, r.alice, "redactable zebra")
			if got := bodies(search(t, r.bob, map[string]any{"search_term": "zebra"}, "").MustOK(t)); len(got) != 1 {
				t.Fatalf("before redaction: %q", got)
			}
			r.alice.Do(t, "PUT", r.path("/redact/%s/rd1", url.PathEscape(id)), map[string]any{}).MustOK(t)
			resp := search(t, r.bob, map[string]any{"search_term": "zebra"}, "").MustOK(t)
			if n := gjson.GetBytes(resp.Raw, "search_categories.room_events.results.#").Int(); n != 0 {
				t.Fatalf("redacted event still found: %s", resp.Raw)
			}
		})

		t.Run("visibility", func(t *testing.T) {
			// Never in the room: nothing, though the room is public.
			eve := srv.Register(t, "eve")
			if got := bodies(search(t, eve, map[string]any{"search_term": "fox"}, "").MustOK(t)); len(got) != 0 {
				t.Errorf("a user never in the room found %q", got)
			}
			// Left: what came before the leave, nothing after.
			carol := srv.Register(t, "carol")
			carol.Do(t, "POST", r.path("/join"), map[string]any{}).MustOK(t)
			r.send(t, r.alice, "walrus before leaving")
			carol.Do(t, "POST", r.path("/leave"), map[string]any{}).MustOK(t)
			r.send(t, r.alice, "walrus after leaving")
			if got := bodies(search(t, carol, map[string]any{"search_term": "walrus"}, "").MustOK(t)); !slices.Equal(got, []string{"walrus before leaving"}) {
				t.Errorf("a user who left found %q", got)
			}
			// Joined-only history: nothing from before the join.
			priv := r.alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat", "initial_state": []map[string]any{{
				"type": "m.room.history_visibility", "state_key": "", "content": map[string]string{"history_visibility": "joined"},
			}}}).MustOK(t).String("room_id")
			sendIn := func(body string) {
				r.alice.Do(t, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/p%d", v3, url.PathEscape(priv), txn.Add(1)),
					map[string]any{"msgtype": "m.text", "body": body}).MustOK(t)
			}
			sendIn("narwhal early")
			dave := srv.Register(t, "dave")
			dave.Do(t, "POST", v3+"/rooms/"+url.PathEscape(priv)+"/join", map[string]any{}).MustOK(t)
			sendIn("narwhal late")
			if got := bodies(search(t, dave, map[string]any{"search_term": "narwhal"}, "").MustOK(t)); !slices.Equal(got, []string{"narwhal late"}) {
				t.Errorf("joined-only history: dave found %q", got)
			}
			if got := bodies(search(t, r.alice, map[string]any{"search_term": "narwhal", "order_by": "recent"}, "").MustOK(t)); !slices.Equal(got, []string{"narwhal late", "narwhal early"}) {
				t.Errorf("alice found %q", got)
			}
		})

		t.Run("bad input", func(t *testing.T) {
			for _, tc := range []struct {
				name, body, next string
				status           int
				code             string
			}{
				{"not json", `{`, "", 400, "M_NOT_JSON"},
				{"no categories", `{}`, "", 400, "M_MISSING_PARAM"},
				{"unknown category", `{"search_categories":{"people":{"search_term":"x"}}}`, "", 400, "M_BAD_JSON"},
				{"no term", `{"search_categories":{"room_events":{}}}`, "", 400, "M_MISSING_PARAM"},
				{"term not a string", `{"search_categories":{"room_events":{"search_term":5}}}`, "", 400, "M_BAD_JSON"},
				{"bad order", `{"search_categories":{"room_events":{"search_term":"x","order_by":"best"}}}`, "", 400, "M_BAD_JSON"},
				{"bad key", `{"search_categories":{"room_events":{"search_term":"x","keys":["content.url"]}}}`, "", 400, "M_BAD_JSON"},
				{"bad group", `{"search_categories":{"room_events":{"search_term":"x","groupings":{"group_by":[{"key":"type"}]}}}}`, "", 400, "M_BAD_JSON"},
				{"bad thread flag", `{"search_categories":{"room_events":{"search_term":"x","filter":{"unread_thread_notifications":"yes"}}}}`, "", 400, "M_BAD_JSON"},
				{"bad filter room", `{"search_categories":{"room_events":{"search_term":"x","filter":{"rooms":["nope"]}}}}`, "", 400, "M_INVALID_PARAM"},
				{"bad next_batch", `{"search_categories":{"room_events":{"search_term":"x"}}}`, "!!notatoken", 400, "M_INVALID_PARAM"},
				{"next_batch of another order", `{"search_categories":{"room_events":{"search_term":"x","order_by":"recent"}}}`, "eyJvIjoicmFuayIsIm0iOjEsImEiOnsiciI6MSwicCI6MX19", 400, "M_INVALID_PARAM"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					path := v3 + "/search"
					if tc.next != "" {
						path += "?next_batch=" + url.QueryEscape(tc.next)
					}
					resp := r.bob.Do(t, "POST", path, tc.body)
					if resp.Status != tc.status || resp.String("errcode") != tc.code {
						t.Errorf("got %d %s, want %d %s", resp.Status, resp.Raw, tc.status, tc.code)
					}
				})
			}
			if resp := (&testserver.Client{Base: srv.URL}).Do(t, "POST", v3+"/search", `{"search_categories":{}}`); resp.Status != 401 {
				t.Errorf("without a token: %d", resp.Status)
			}
		})
	})
}
