package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
)

// Registration methods, chosen with -reg.
const (
	regOpen   = "open"          // POST /register with m.login.dummy
	regShared = "shared-secret" // Synapse's /_synapse/admin/v1/register
)

// registrar creates users on the homeserver.
type registrar struct {
	base   string
	hc     *http.Client
	method string
	secret string
}

type registerResponse struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
	DeviceID    string `json:"device_id"`
}

// Register creates user localpart with password and returns a logged-in
// client for it.
func (r *registrar) Register(ctx context.Context, localpart, password string) (*Client, error) {
	anon := &Client{base: r.base, hc: r.hc}
	var out registerResponse
	var err error
	switch r.method {
	case regOpen:
		out, err = r.registerOpen(ctx, anon, localpart, password)
	case regShared:
		out, err = r.registerShared(ctx, anon, localpart, password)
	default:
		err = fmt.Errorf("unknown registration method %q", r.method)
	}
	if err != nil {
		return nil, err
	}
	if out.AccessToken == "" {
		return nil, fmt.Errorf("register %s: no access token in the response", localpart)
	}
	return &Client{base: r.base, hc: r.hc, UserID: out.UserID, Token: out.AccessToken, DeviceID: out.DeviceID}, nil
}

// registerOpen runs the user-interactive registration a client runs
// (spec: Client-Server API, "User-interactive authentication"): a first
// request learns the session, a second completes m.login.dummy in it.
func (r *registrar) registerOpen(ctx context.Context, c *Client, localpart, password string) (registerResponse, error) {
	body := map[string]any{
		"username":                    localpart,
		"password":                    password,
		"initial_device_display_name": "myelin-load",
	}
	var out registerResponse
	b, err := c.do(ctx, http.MethodPost, clientPrefix+"/register", nil, body, reqTimeout)
	var ae *apiError
	switch {
	case err == nil:
		// No UIA demanded.
		return out, decodeInto(b, &out)
	case !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized:
		return out, err
	}
	var uia struct {
		Session string `json:"session"`
	}
	if err := decodeInto(b, &uia); err != nil {
		return out, fmt.Errorf("register: UIA challenge: %w", err)
	}
	body["auth"] = map[string]any{"type": "m.login.dummy", "session": uia.Session}
	err = c.doJSON(ctx, http.MethodPost, clientPrefix+"/register", nil, body, &out, reqTimeout)
	return out, err
}

// registerShared uses Synapse's shared-secret registration: fetch a nonce,
// then post the user with an HMAC proving knowledge of the secret.
func (r *registrar) registerShared(ctx context.Context, c *Client, localpart, password string) (registerResponse, error) {
	const path = "/_synapse/admin/v1/register"
	var out registerResponse
	var n struct {
		Nonce string `json:"nonce"`
	}
	if err := c.doJSON(ctx, http.MethodGet, path, nil, nil, &n, reqTimeout); err != nil {
		return out, err
	}
	body := map[string]any{
		"nonce":    n.Nonce,
		"username": localpart,
		"password": password,
		"admin":    false,
		"mac":      sharedSecretMAC(r.secret, n.Nonce, localpart, password, false),
	}
	err := c.doJSON(ctx, http.MethodPost, path, nil, body, &out, reqTimeout)
	return out, err
}

// sharedSecretMAC is the hex HMAC-SHA1, keyed with the shared secret, of
// nonce NUL user NUL password NUL "admin"|"notadmin", as Synapse's
// register_new_matrix_user computes it.
func sharedSecretMAC(secret, nonce, user, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce))
	m.Write([]byte{0})
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	m.Write([]byte{0})
	if admin {
		m.Write([]byte("admin"))
	} else {
		m.Write([]byte("notadmin"))
	}
	return hex.EncodeToString(m.Sum(nil))
}
