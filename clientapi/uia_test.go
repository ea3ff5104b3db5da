package clientapi

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"myelin/internal/mxhttp"
)

func TestUIARun(t *testing.T) {
	s := newUIASessions()
	password := func(d *authDict) error {
		if d.Password != "right" {
			return &stageFailed{code: "M_FORBIDDEN", msg: "Invalid password"}
		}
		return nil
	}
	// A two-stage flow beside a one-stage one shows progress through
	// "completed"; Myelin's endpoints offer one stage each today.
	flows := [][]string{{stageDummy, stagePassword}, {stagePassword, "m.login.other"}}
	var session string
	steps := []struct {
		name          string
		scope         string
		body          string // with SESSION replaced
		wantDone      bool
		wantStatus    int // challenge status, 0 for an error
		wantErrCode   string
		wantCompleted []string
		wantX         string // the parameter the request stands for
	}{
		{name: "no auth: challenge", body: `{"x":"first"}`, wantStatus: 401, wantCompleted: []string{}, wantX: "first"},
		{name: "null auth: challenge", body: `{"auth":null}`, wantStatus: 401, wantCompleted: []string{}},
		{name: "first stage", body: `{"auth":{"type":"m.login.dummy","session":"SESSION"}}`, wantStatus: 401, wantCompleted: []string{stageDummy}, wantX: "first"},
		{name: "session only: where it stands", body: `{"auth":{"session":"SESSION"}}`, wantStatus: 401, wantCompleted: []string{stageDummy}, wantX: "first"},
		{name: "new parameters replace the old", body: `{"x":"second","auth":{"type":"m.login.password","password":"wrong","session":"SESSION"}}`, wantStatus: 401, wantErrCode: "M_FORBIDDEN", wantCompleted: []string{stageDummy}, wantX: "second"},
		{name: "other operation", scope: "other", body: `{"auth":{"type":"m.login.password","password":"right","session":"SESSION"}}`, wantErrCode: "M_FORBIDDEN"},
		{name: "stage not offered", body: `{"auth":{"type":"m.login.terms","session":"SESSION"}}`, wantErrCode: "M_UNRECOGNIZED"},
		{name: "auth not an object", body: `{"auth":[]}`, wantErrCode: "M_BAD_JSON"},
		{name: "body not an object", body: `[]`, wantErrCode: "M_BAD_JSON"},
		{name: "flow complete, with the remembered parameters", body: `{"auth":{"type":"m.login.password","password":"right","session":"SESSION"}}`, wantDone: true, wantX: "second"},
		{name: "session gone", body: `{"auth":{"type":"m.login.dummy","session":"SESSION"}}`, wantErrCode: "M_UNKNOWN"},
		{name: "no session: one is started", body: `{"auth":{"type":"m.login.dummy"}}`, wantStatus: 401, wantCompleted: []string{stageDummy}},
	}
	for _, st := range steps {
		scope := st.scope
		if scope == "" {
			scope = "test"
		}
		body := st.body
		if session != "" {
			body = strings.ReplaceAll(body, "SESSION", session)
		}
		var req struct {
			X string `json:"x"`
		}
		resp, err := func() (*mxhttp.Response, error) {
			att, err := s.open(uiaOp{scope: scope, flows: flows, password: password}, []byte(body), &req)
			if err != nil {
				return nil, err
			}
			return att.run()
		}()
		switch {
		case st.wantDone:
			if resp != nil || err != nil {
				t.Fatalf("%s: got %+v, %v; want done", st.name, resp, err)
			}
		case st.wantStatus == 0:
			if code := mxhttp.ToError(err).Code; err == nil || code != st.wantErrCode {
				t.Fatalf("%s: got %+v, %v; want error %s", st.name, resp, err, st.wantErrCode)
			}
			continue
		default:
			if err != nil || resp == nil || resp.Status != st.wantStatus {
				t.Fatalf("%s: got %+v, %v; want status %d", st.name, resp, err, st.wantStatus)
			}
			body := resp.Body.(uiaChallenge)
			if len(body.Flows) != 2 || body.Session == "" || body.ErrCode != st.wantErrCode || !slices.Equal(body.Completed, st.wantCompleted) || body.Completed == nil {
				t.Fatalf("%s: challenge %+v", st.name, body)
			}
			if session == "" {
				session = body.Session
			}
		}
		if req.X != st.wantX {
			t.Fatalf("%s: x = %q, want %q", st.name, req.X, st.wantX)
		}
	}
}

// TestUIAIdempotent: a session of an idempotent operation outlives its
// completion, remembers the outcome, and lets one request at a time do the
// operation.
func TestUIAIdempotent(t *testing.T) {
	s := newUIASessions()
	op := uiaOp{scope: "register", flows: [][]string{{stageDummy}}, idempotent: true}
	type params struct {
		Password string `json:"password"`
		Device   string `json:"device"`
	}
	open := func(body string) (*uiaAttempt, params) {
		t.Helper()
		var p params
		att, err := s.open(op, []byte(body), &p)
		if err != nil {
			t.Fatal(err)
		}
		return att, p
	}
	att, _ := open(`{"password":"pw","device":"D"}`)
	resp, err := att.run()
	if err != nil || resp == nil {
		t.Fatalf("challenge: %+v, %v", resp, err)
	}
	session := resp.Body.(uiaChallenge).Session
	auth := `{"auth":{"type":"m.login.dummy","session":"` + session + `"}}`

	att, p := open(auth)
	if p != (params{"pw", "D"}) || att.outcome() != "" {
		t.Fatalf("params %+v, outcome %q", p, att.outcome())
	}
	if resp, err := att.run(); resp != nil || err != nil {
		t.Fatalf("complete: %+v, %v", resp, err)
	}
	unlock, err := att.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A second request completing the session waits for the first.
	second, _ := open(auth)
	if resp, err := second.run(); resp != nil || err != nil {
		t.Fatalf("complete again: %+v, %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := second.lock(ctx); err == nil {
		t.Fatal("second request got the lock while the first held it")
	}
	if err := att.succeed("@u:x"); err != nil {
		t.Fatal(err)
	}
	unlock()
	unlock, err = second.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if got := second.outcome(); got != "@u:x" {
		t.Fatalf("outcome %q", got)
	}
	// Once done, the session keeps the parameters but not the password.
	if _, p := open(auth); p != (params{Device: "D"}) {
		t.Fatalf("params after success %+v", p)
	}
	// An auth dict with only the session of a complete flow passes too.
	att, _ = open(`{"auth":{"session":"` + session + `"}}`)
	if resp, err := att.run(); resp != nil || err != nil || att.outcome() != "@u:x" {
		t.Fatalf("session only: %+v, %v, %q", resp, err, att.outcome())
	}
}

func TestExpiring(t *testing.T) {
	now := time.Unix(1000, 0)
	e := newExpiring[int](time.Minute, 3)
	e.now = func() time.Time { return now }

	a, _ := e.add(1)
	if v, ok := e.get(a); !ok || v != 1 {
		t.Fatalf("get = %v, %v", v, ok)
	}
	if err := e.update(a, func(v *int) { *v = 2 }); err != nil {
		t.Fatal(err)
	}
	if v, ok := e.take(a); !ok || v != 2 {
		t.Fatalf("take = %v, %v", v, ok)
	}
	if _, ok := e.take(a); ok {
		t.Fatal("taken twice")
	}

	b, _ := e.add(1)
	now = now.Add(2 * time.Minute)
	if err := e.update(b, func(v *int) { *v = 3 }); err == nil {
		t.Fatal("expired item updated")
	}
	if _, ok := e.get(b); ok {
		t.Fatal("expired item returned")
	}

	for i := 0; i < 10; i++ {
		if _, err := e.add(i); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.items) > 3 {
		t.Fatalf("%d items, max 3", len(e.items))
	}
}

// TestExpiringEvictsOldest: a burst of adds beyond the cap pushes out the
// oldest items, never the ones just added, and taken IDs do not pile up.
func TestExpiringEvictsOldest(t *testing.T) {
	e := newExpiring[int](time.Minute, 100)
	var ids []string
	for i := 0; i < 1000; i++ {
		id, _ := e.add(i)
		ids = append(ids, id)
		if i%2 == 1 {
			e.take(ids[i-1]) // half are completed and taken at once
		}
	}
	for i := 990; i < 1000; i += 2 {
		if _, ok := e.get(ids[i+1]); !ok {
			t.Fatalf("item %d of the last ten evicted", i+1)
		}
	}
	if len(e.items) > 100 || len(e.order) > 2*100+16 {
		t.Fatalf("%d items, %d ids in order", len(e.items), len(e.order))
	}
}

func TestExpiringTakeOnce(t *testing.T) {
	e := newExpiring[struct{}](time.Minute, 10)
	id, _ := e.add(struct{}{})
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok := e.take(id); ok {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("nonce taken %d times", wins.Load())
	}
}
