package userapi

import (
	"context"
	"errors"
	"testing"
	"time"

	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
)

// TestOpenIDTokens: a token names its user until it expires, and not
// after, nor once the account is deactivated; access tokens are not
// OpenID tokens.
func TestOpenIDTokens(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		clock := &testClock{t: time.UnixMilli(1_700_000_000_000)}
		u.now = clock.now
		alice := mustCreate(t, u, "alice", "pw").UserID
		bob := mustCreate(t, u, "bob", "pw").UserID
		_, access := mustLogin(t, u, alice, "D")
		tokA, err := u.CreateOpenIDToken(ctx, alice)
		if err != nil {
			t.Fatal(err)
		}
		if tokA.ExpiresIn != time.Hour || tokA.Token == "" {
			t.Fatalf("token %+v", tokA)
		}
		tokB, err := u.CreateOpenIDToken(ctx, bob)
		if err != nil {
			t.Fatal(err)
		}
		check := func(name, token, want string) {
			t.Helper()
			got, err := u.OpenIDUser(ctx, token)
			if want == "" {
				if !errors.Is(err, uapi.ErrUnknownToken) {
					t.Errorf("%s: %q %v, want ErrUnknownToken", name, got, err)
				}
				return
			}
			if err != nil || got != want {
				t.Errorf("%s: %q %v, want %s", name, got, err, want)
			}
		}
		check("alice's token", tokA.Token, alice)
		check("bob's token", tokB.Token, bob)
		check("an access token", access, "")
		check("empty", "", "")
		check("unknown", tokA.Token+"x", "")
		if err := u.Deactivate(ctx, bob, false); err != nil {
			t.Fatal(err)
		}
		check("deactivated bob's token", tokB.Token, "")
		clock.advance(time.Hour - time.Millisecond)
		check("alice's token just before it expires", tokA.Token, alice)
		clock.advance(time.Millisecond)
		check("alice's expired token", tokA.Token, "")
		// The expired token is dropped with the next one made; that one works.
		tokC, err := u.CreateOpenIDToken(ctx, alice)
		if err != nil {
			t.Fatal(err)
		}
		check("alice's new token", tokC.Token, alice)
		check("alice's expired token, dropped", tokA.Token, "")
	})
}
