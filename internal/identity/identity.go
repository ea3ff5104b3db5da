// Package identity is Myelin's client of identity servers (spec: Identity
// Service API v2): looking a third-party identifier (an email address)
// up, storing an invite for one that is bound to no Matrix user yet, and
// asking whether an identity server's public key is still valid. Identity
// servers are named by clients, so the HTTP client given must refuse
// private addresses unless the operator allows them (fedhttp's guarded
// client does).
package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxid"
	"myelin/internal/signing"
)

// maxAnswerBytes bounds what is read of an identity server's answer.
const maxAnswerBytes = 64 << 10

// timeout bounds each request to an identity server.
const timeout = 15 * time.Second

// Client talks to identity servers.
type Client struct {
	http *http.Client
	key  *signing.Key
}

// New makes a Client sending through hc; key signs the requests the
// identity service API has a homeserver sign (unbind), nil sends them
// unsigned.
func New(hc *http.Client, key *signing.Key) *Client { return &Client{http: hc, key: key} }

// Error is an identity server's refusal or a failure to reach it.
type Error struct {
	Server string
	Status int // 0 when it could not be reached
	Code   string
	Msg    string
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("identity server %s: %s", e.Server, e.Msg)
	}
	return fmt.Sprintf("identity server %s answered %d %s: %s", e.Server, e.Status, e.Code, e.Msg)
}

// CheckServer reports whether s can name an identity server (a host and
// an optional port, as a Matrix server name).
func CheckServer(s string) error {
	if err := mxid.ServerName(s); err != nil {
		return fmt.Errorf("id_server %q is not a host name: %w", s, err)
	}
	return nil
}

// do sends a request to server's path with the access token and decodes
// the JSON answer into out.
func (c *Client) do(ctx context.Context, method, server, token, path string, body, out any) error {
	if err := CheckServer(server); err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	return c.send(ctx, method, "https://"+server+path, server, token, rd, out)
}

func (c *Client) send(ctx context.Context, method, u, server, token string, body io.Reader, out any) error {
	auth := ""
	if token != "" {
		auth = "Bearer " + token
	}
	return c.sendAuth(ctx, method, u, server, auth, body, out)
}

// sendAuth sends a request with auth as its Authorization header (none
// when empty) and decodes the JSON answer into out.
func (c *Client) sendAuth(ctx context.Context, method, u, server, auth string, body io.Reader, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return &Error{Server: server, Msg: err.Error()}
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, maxAnswerBytes))
	if err != nil {
		return &Error{Server: server, Msg: fmt.Sprintf("read answer: %v", err)}
	}
	if res.StatusCode != http.StatusOK {
		var e struct {
			Code string `json:"errcode"`
			Msg  string `json:"error"`
		}
		_ = json.Unmarshal(raw, &e)
		return &Error{Server: server, Status: res.StatusCode, Code: e.Code, Msg: e.Msg}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return &Error{Server: server, Status: res.StatusCode, Msg: fmt.Sprintf("answer is not JSON: %v", err)}
	}
	return nil
}

// Lookup returns the Matrix user medium/address is bound to on server,
// "" when it is bound to none (spec: POST /_matrix/identity/v2/lookup,
// hashed with sha256 when the server offers it, as the spec prefers).
func (c *Client) Lookup(ctx context.Context, server, token, medium, address string) (string, error) {
	var details struct {
		Pepper     string   `json:"lookup_pepper"`
		Algorithms []string `json:"algorithms"`
	}
	if err := c.do(ctx, http.MethodGet, server, token, "/_matrix/identity/v2/hash_details", nil, &details); err != nil {
		return "", err
	}
	alg, key := "none", address+" "+medium
	if slices.Contains(details.Algorithms, "sha256") {
		sum := sha256.Sum256([]byte(address + " " + medium + " " + details.Pepper))
		alg, key = "sha256", base64.RawURLEncoding.EncodeToString(sum[:])
	} else if !slices.Contains(details.Algorithms, "none") {
		return "", &Error{Server: server, Status: http.StatusOK, Msg: "offers no lookup algorithm this server knows"}
	}
	var res struct {
		Mappings map[string]string `json:"mappings"`
	}
	if err := c.do(ctx, http.MethodPost, server, token, "/_matrix/identity/v2/lookup",
		map[string]any{"algorithm": alg, "pepper": details.Pepper, "addresses": []string{key}}, &res); err != nil {
		return "", err
	}
	userID := res.Mappings[key]
	if userID != "" && mxid.UserID(userID) != nil {
		return "", &Error{Server: server, Status: http.StatusOK, Msg: fmt.Sprintf("maps the address to %q, not a user ID", userID)}
	}
	return userID, nil
}

// StoreInviteRequest is what the identity server keeps of an invite, to
// tell the invitee (spec: POST /_matrix/identity/v2/store-invite).
type StoreInviteRequest struct {
	Medium            string `json:"medium"`
	Address           string `json:"address"`
	RoomID            string `json:"room_id"`
	Sender            string `json:"sender"`
	RoomAlias         string `json:"room_alias,omitempty"`
	RoomAvatarURL     string `json:"room_avatar_url,omitempty"`
	RoomJoinRules     string `json:"room_join_rules,omitempty"`
	RoomName          string `json:"room_name,omitempty"`
	RoomType          string `json:"room_type,omitempty"`
	SenderDisplayName string `json:"sender_display_name,omitempty"`
	SenderAvatarURL   string `json:"sender_avatar_url,omitempty"`
}

// PublicKey is a key the identity server signs the invite's proof with.
type PublicKey struct {
	PublicKey      string `json:"public_key"`
	KeyValidityURL string `json:"key_validity_url"`
}

// StoredInvite is the identity server's answer: what goes into the
// room's m.room.third_party_invite event.
type StoredInvite struct {
	Token       string      `json:"token"`
	DisplayName string      `json:"display_name"`
	PublicKeys  []PublicKey `json:"public_keys"`
}

// StoreInvite asks server to keep an invite for req's address until it is
// bound, and returns its token and keys.
func (c *Client) StoreInvite(ctx context.Context, server, token string, req StoreInviteRequest) (*StoredInvite, error) {
	var res StoredInvite
	if err := c.do(ctx, http.MethodPost, server, token, "/_matrix/identity/v2/store-invite", req, &res); err != nil {
		return nil, err
	}
	if res.Token == "" || len(res.PublicKeys) == 0 {
		return nil, &Error{Server: server, Status: http.StatusOK, Msg: "store-invite answered no token or no public key"}
	}
	for _, k := range res.PublicKeys {
		if k.PublicKey == "" {
			return nil, &Error{Server: server, Status: http.StatusOK, Msg: "store-invite answered an empty public key"}
		}
	}
	return &res, nil
}

// ErrBadValidityURL is the error of a key validity URL that is not an
// https:// URL of a host.
var ErrBadValidityURL = errors.New("key_validity_url is not an https URL")

// KeyValid asks the identity server behind validityURL whether publicKey
// is still one of its valid keys (spec: GET
// /_matrix/identity/v2/pubkey/isvalid).
func (c *Client) KeyValid(ctx context.Context, validityURL, publicKey string) (bool, error) {
	u, err := url.Parse(validityURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || CheckServer(u.Host) != nil {
		return false, ErrBadValidityURL
	}
	q := u.Query()
	q.Set("public_key", publicKey)
	u.RawQuery = q.Encode()
	var res struct {
		Valid bool `json:"valid"`
	}
	if err := c.send(ctx, http.MethodGet, u.String(), u.Host, "", nil, &res); err != nil {
		return false, err
	}
	return res.Valid, nil
}

// Bind asks server to bind the third-party identifier it validated in
// session sid to userID (spec: POST /_matrix/identity/v2/3pid/bind), and
// returns the identifier.
func (c *Client) Bind(ctx context.Context, server, token, sid, clientSecret, userID string) (medium, address string, err error) {
	var res struct {
		Medium  string `json:"medium"`
		Address string `json:"address"`
		MXID    string `json:"mxid"`
	}
	if err := c.do(ctx, http.MethodPost, server, token, "/_matrix/identity/v2/3pid/bind",
		map[string]string{"sid": sid, "client_secret": clientSecret, "mxid": userID}, &res); err != nil {
		return "", "", err
	}
	if res.MXID != userID || res.Medium == "" || res.Address == "" {
		return "", "", &Error{Server: server, Status: http.StatusOK, Msg: "bind answered another binding than asked"}
	}
	return res.Medium, res.Address, nil
}

// Unbind asks server to remove the binding of medium/address to userID
// (spec: POST /_matrix/identity/v2/3pid/unbind, signed by this server).
// A binding the identity server does not have counts as removed.
func (c *Client) Unbind(ctx context.Context, server, userID, medium, address string) error {
	if err := CheckServer(server); err != nil {
		return err
	}
	const path = "/_matrix/identity/v2/3pid/unbind"
	body := map[string]any{"mxid": userID, "threepid": map[string]string{"medium": medium, "address": address}}
	var auth string
	if c.key != nil {
		req := fclient.NewFederationRequest(http.MethodPost, c.key.ServerName, spec.ServerName(server), path)
		if err := req.SetContent(body); err != nil {
			return err
		}
		if err := req.Sign(c.key.ServerName, c.key.KeyID, c.key.Private); err != nil {
			return fmt.Errorf("sign unbind: %w", err)
		}
		hr, err := req.HTTPRequest()
		if err != nil {
			return err
		}
		auth = hr.Header.Get("Authorization")
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	err = c.sendAuth(ctx, http.MethodPost, "https://"+server+path, server, auth, bytes.NewReader(raw), &struct{}{})
	var ie *Error
	if errors.As(err, &ie) && ie.Status == http.StatusNotFound {
		return nil
	}
	return err
}
