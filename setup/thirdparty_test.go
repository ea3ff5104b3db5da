package setup_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// fakeIdentity is an identity server over TLS on loopback: nothing is
// bound, every invite is stored, and its key is valid while valid is set.
type fakeIdentity struct {
	srv   *httptest.Server
	name  string // host:port, as clients name it in id_server
	pub   ed25519.PublicKey
	priv  ed25519.PrivateKey
	valid atomic.Bool

	mu       sync.Mutex
	tokens   []string
	bindings map[string]string // address -> mxid
	unbindBy []string          // the X-Matrix origin of each unbind
}

func newFakeIdentity(t *testing.T) *fakeIdentity {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIdentity{pub: pub, priv: priv, bindings: map[string]string{}}
	f.valid.Store(true)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/identity/v2/hash_details", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"lookup_pepper": "pepper", "algorithms": []string{"sha256"}})
	})
	mux.HandleFunc("POST /_matrix/identity/v2/lookup", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"mappings": map[string]string{}})
	})
	mux.HandleFunc("POST /_matrix/identity/v2/store-invite", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		token := fmt.Sprintf("tok%d", len(f.tokens))
		f.tokens = append(f.tokens, token)
		f.mu.Unlock()
		key := base64.RawStdEncoding.EncodeToString(f.pub)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"token": token, "display_name": "c...@example.org",
			"public_keys": []map[string]string{{"public_key": key, "key_validity_url": "https://" + f.name + "/_matrix/identity/v2/pubkey/isvalid"}},
		})
	})
	mux.HandleFunc("GET /_matrix/identity/v2/pubkey/isvalid", func(w http.ResponseWriter, r *http.Request) {
		ok := f.valid.Load() && r.URL.Query().Get("public_key") == base64.RawStdEncoding.EncodeToString(f.pub)
		_ = json.NewEncoder(w).Encode(map[string]bool{"valid": ok})
	})
	mux.HandleFunc("POST /_matrix/identity/v2/3pid/bind", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ SID, MXID string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		address := req.SID + "@example.org" // each session validated one address
		f.mu.Lock()
		f.bindings[address] = req.MXID
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"medium": "email", "address": address, "mxid": req.MXID})
	})
	mux.HandleFunc("POST /_matrix/identity/v2/3pid/unbind", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			MXID     string                   `json:"mxid"`
			Threepid struct{ Address string } `json:"threepid"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		defer f.mu.Unlock()
		origin, _, _ := strings.Cut(strings.TrimPrefix(r.Header.Get("Authorization"), `X-Matrix origin="`), `"`)
		f.unbindBy = append(f.unbindBy, origin)
		if f.bindings[req.Threepid.Address] != req.MXID {
			http.NotFound(w, r)
			return
		}
		delete(f.bindings, req.Threepid.Address)
		_ = json.NewEncoder(w).Encode(map[string]any{})
	})
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	f.name = f.srv.Listener.Addr().(*net.TCPAddr).String()
	return f
}

// proof is the identity server's signed proof that token's address is
// bound to mxid, signed with key.
func (f *fakeIdentity) proof(t *testing.T, mxid, token string, key ed25519.PrivateKey) json.RawMessage {
	raw, err := json.Marshal(map[string]string{"mxid": mxid, "token": token})
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gmsl.SignJSON(f.name, "ed25519:0", key, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func (f *fakeIdentity) lastToken(t *testing.T) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.tokens) == 0 {
		t.Fatal("no invite stored at the identity server")
	}
	return f.tokens[len(f.tokens)-1]
}

// TestThirdPartyInvites: alice of hsa invites an email address through an
// identity server into a room bob of hsb is in; the address is bound to
// carol of hsb, whose server hears of it (onbind, on its client listener
// as identity servers reach it) and has hsa make the invite (hsa's user
// sent it, so only hsa can sign it: exchange_third_party_invite). A proof
// signed by another key, or by a key its identity server no longer
// vouches for, makes no invite. A /join carrying the proof (with the
// inviter named in it, as third_party_signed has) invites and joins.
func TestThirdPartyInvites(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		insecure := func(c *config.Config) { c.FederationAPI.InsecureIdentityServers = true }
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL, insecure)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)), insecure)
		ids := newFakeIdentity(t)
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		carol := hsB.Register(t, "carol")
		dan := hsA.Register(t, "dan")

		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "private_chat"}).MustOK(t).String("room_id")
		alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", map[string]string{"user_id": "@bob:hsb.test"}).MustOK(t)
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)

		invite3PID := func(t *testing.T) string {
			t.Helper()
			alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", map[string]string{
				"id_server": ids.name, "id_access_token": "secret", "medium": "email", "address": "carol@example.org",
			}).MustOK(t)
			token := ids.lastToken(t)
			poll.Until(t, 10*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.third_party_invite/"+token, nil)
				if r.Status != http.StatusOK {
					return fmt.Errorf("bob does not see the third-party invite: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			return token
		}
		onbind := func(t *testing.T, srv *testserver.Server, mxid string, signed json.RawMessage) *testserver.Response {
			t.Helper()
			c := &testserver.Client{Base: srv.URL}
			return c.Do(t, "POST", "/_matrix/federation/v1/3pid/onbind", map[string]any{
				"medium": "email", "address": "carol@example.org", "mxid": mxid,
				"invites": []map[string]any{{"medium": "email", "address": "carol@example.org", "mxid": mxid,
					"room_id": room, "sender": "@alice:hsa.test", "signed": signed}},
			})
		}
		membership := func(c *testserver.Client, user string) string {
			r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/"+user, nil)
			if r.Status != http.StatusOK {
				return ""
			}
			return r.String("membership")
		}

		t.Run("a proof signed by another key makes no invite", func(t *testing.T) {
			token := invite3PID(t)
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			r := onbind(t, hsB, "@carol:hsb.test", ids.proof(t, "@carol:hsb.test", token, other))
			if r.Status != http.StatusForbidden {
				t.Fatalf("onbind with a forged proof: %d %s", r.Status, r.Raw)
			}
			if m := membership(alice, "@carol:hsb.test"); m != "" {
				t.Fatalf("carol is %q after a forged proof", m)
			}
		})

		t.Run("a key the identity server revoked makes no invite", func(t *testing.T) {
			token := invite3PID(t)
			ids.valid.Store(false)
			defer ids.valid.Store(true)
			r := onbind(t, hsB, "@carol:hsb.test", ids.proof(t, "@carol:hsb.test", token, ids.priv))
			if r.Status != http.StatusForbidden {
				t.Fatalf("onbind with a revoked key: %d %s", r.Status, r.Raw)
			}
			if m := membership(alice, "@carol:hsb.test"); m != "" {
				t.Fatalf("carol is %q after a revoked key", m)
			}
		})

		t.Run("bound on another server than the inviter's", func(t *testing.T) {
			token := invite3PID(t)
			from := alice.Do(t, "GET", "/_matrix/client/v3/events?timeout=0", nil).MustOK(t).String("end")
			onbind(t, hsB, "@carol:hsb.test", ids.proof(t, "@carol:hsb.test", token, ids.priv)).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if m := membership(alice, "@carol:hsb.test"); m != spec.Invite {
					return fmt.Errorf("alice sees carol as %q", m)
				}
				return nil
			})
			// The invite is in alice's event stream too, not only in the
			// room's state.
			r := alice.Do(t, "GET", "/_matrix/client/v3/events?timeout=0&from="+url.QueryEscape(from), nil).MustOK(t)
			if !strings.Contains(string(r.Raw), `"state_key":"@carol:hsb.test"`) {
				t.Fatalf("alice's event stream lacks carol's invite: %s", r.Raw)
			}
			r = alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/@carol:hsb.test", nil).MustOK(t)
			var content struct {
				ThirdPartyInvite struct {
					DisplayName string `json:"display_name"`
				} `json:"third_party_invite"`
			}
			if err := json.Unmarshal(r.Raw, &content); err != nil || content.ThirdPartyInvite.DisplayName != "c...@example.org" {
				t.Fatalf("carol's invite: %s", r.Raw)
			}
			carol.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if m := membership(alice, "@carol:hsb.test"); m != spec.Join {
					return fmt.Errorf("alice sees carol as %q", m)
				}
				return nil
			})
		})

		t.Run("join with third_party_signed", func(t *testing.T) {
			token := invite3PID(t)
			raw, _ := json.Marshal(map[string]string{"mxid": "@dan:hsa.test", "token": token, "sender": "@alice:hsa.test"})
			signed, err := gmsl.SignJSON(ids.name, "ed25519:0", ids.priv, raw)
			if err != nil {
				t.Fatal(err)
			}
			dan.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{"third_party_signed": json.RawMessage(signed)}).MustOK(t)
			if m := membership(alice, "@dan:hsa.test"); m != spec.Join {
				t.Fatalf("dan is %q", m)
			}
		})
	})
}

// TestThreepidBindings: a user binds an email address on an identity
// server through this server, which remembers where; an unbind naming no
// identity server unbinds it there (signed by this server), and
// deactivation unbinds what is left.
func TestThreepidBindings(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
			c.FederationAPI.InsecureIdentityServers = true
			c.FederationAPI.AllowPrivateAddresses = true
		}))
		ids := newFakeIdentity(t)
		alice := srv.Register(t, "alice")
		bind := func(sid string) {
			alice.Do(t, "POST", "/_matrix/client/v3/account/3pid/bind", map[string]string{
				"id_server": ids.name, "id_access_token": "secret", "sid": sid, "client_secret": "s3cret",
			}).MustOK(t)
		}
		bound := func(address string) string {
			ids.mu.Lock()
			defer ids.mu.Unlock()
			return ids.bindings[address]
		}
		bind("one")
		bind("two")
		if bound("one@example.org") != "@alice:localhost" || bound("two@example.org") != "@alice:localhost" {
			t.Fatalf("bindings at the identity server: %v", ids.bindings)
		}
		r := alice.Do(t, "POST", "/_matrix/client/v3/account/3pid/unbind", map[string]string{"medium": "email", "address": "one@example.org"}).MustOK(t)
		if r.String("id_server_unbind_result") != "success" || bound("one@example.org") != "" {
			t.Fatalf("unbind: %s; bindings %v", r.Raw, ids.bindings)
		}
		if got := ids.unbindBy; len(got) != 1 || got[0] != "localhost" {
			t.Fatalf("unbind signed by %q, want this server", got)
		}
		// Nothing recorded for this address: nothing to unbind.
		r = alice.Do(t, "POST", "/_matrix/client/v3/account/3pid/delete", map[string]string{"medium": "email", "address": "none@example.org"}).MustOK(t)
		if r.String("id_server_unbind_result") != "no-support" {
			t.Fatalf("delete of an unbound address: %s", r.Raw)
		}
		bad := alice.Do(t, "POST", "/_matrix/client/v3/account/3pid/bind", map[string]string{
			"id_server": "not a host", "id_access_token": "secret", "sid": "x", "client_secret": "s3cret",
		})
		if bad.Status != http.StatusBadRequest || bad.String("errcode") != "M_INVALID_PARAM" {
			t.Fatalf("bind with a bad id_server: %d %s", bad.Status, bad.Raw)
		}
		r = alice.Do(t, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{
			"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "password-alice"},
		}).MustOK(t)
		if r.String("id_server_unbind_result") != "success" || bound("two@example.org") != "" {
			t.Fatalf("deactivate: %s; bindings %v", r.Raw, ids.bindings)
		}
	})
}
