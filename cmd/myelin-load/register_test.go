package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

func TestSharedSecretMAC(t *testing.T) {
	// Computed independently with Python's hmac module:
	// hmac.new(b"sekrit", b"abc123\0alice\0pa55\0notadmin", hashlib.sha1).hexdigest()
	tests := []struct {
		admin bool
		want  string
	}{
		{false, "a091380a71bebc6cd393199c313ea62c933e31d8"},
		{true, "434d6369ade4e70316ec689fe33ff526a4a1119f"},
	}
	for _, tt := range tests {
		if got := sharedSecretMAC("sekrit", "abc123", "alice", "pa55", tt.admin); got != tt.want {
			t.Errorf("admin=%v: mac %s, want %s", tt.admin, got, tt.want)
		}
	}
}

// fakeRegistration serves both registration flows the way Synapse does.
func fakeRegistration(t *testing.T, secret string) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_matrix/client/v3/register", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Username string `json:"username"`
			Auth     *struct {
				Type    string `json:"type"`
				Session string `json:"session"`
			} `json:"auth"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		if body.Auth == nil || body.Auth.Session != "s1" || body.Auth.Type != "m.login.dummy" {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"session":"s1","flows":[{"stages":["m.login.dummy"]}],"params":{}}`))
			return
		}
		json.NewEncoder(w).Encode(registerResponse{UserID: "@" + body.Username + ":test", AccessToken: "tok-" + body.Username, DeviceID: "D"})
	})
	mux.HandleFunc("GET /_synapse/admin/v1/register", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"nonce":"n0"}`))
	})
	mux.HandleFunc("POST /_synapse/admin/v1/register", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Nonce, Username, Password, Mac string
			Admin                          bool
		}
		json.NewDecoder(r.Body).Decode(&body)
		if body.Mac != sharedSecretMAC(secret, body.Nonce, body.Username, body.Password, body.Admin) {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"HMAC incorrect"}`))
			return
		}
		json.NewEncoder(w).Encode(registerResponse{UserID: "@" + body.Username + ":test", AccessToken: "tok-" + body.Username})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestRegister(t *testing.T) {
	srv := fakeRegistration(t, "sekrit")
	hc := &http.Client{Transport: newTransport(nil, 2)}
	ctx := context.Background()
	for _, method := range []string{regOpen, regShared} {
		t.Run(method, func(t *testing.T) {
			r := &registrar{base: srv.URL, hc: hc, method: method, secret: "sekrit"}
			c, err := r.Register(ctx, "alice", "pw")
			if err != nil {
				t.Fatal(err)
			}
			if c.UserID != "@alice:test" || c.Token != "tok-alice" {
				t.Errorf("got user %q token %q", c.UserID, c.Token)
			}
		})
	}
	r := &registrar{base: srv.URL, hc: hc, method: regShared, secret: "wrong"}
	if _, err := r.Register(ctx, "bob", "pw"); errorKind(err) != "403 M_FORBIDDEN" {
		t.Errorf("wrong secret: %v", err)
	}
}

func TestRetryOnLimitExceeded(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":10}`))
			return
		}
		w.Write([]byte(`{"room_id":"!r:test"}`))
	}))
	defer srv.Close()
	c := &Client{base: srv.URL, hc: &http.Client{Transport: newTransport(nil, 1)}, Token: "t"}
	id, err := c.CreateRoom(context.Background(), "x")
	if err != nil || id != "!r:test" || calls.Load() != 3 {
		t.Errorf("CreateRoom = %q, %v after %d calls", id, err, calls.Load())
	}
}
