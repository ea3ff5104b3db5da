package clientapi

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gorilla/mux"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Token-authenticated registration (spec: "Token-authenticated
// registration"): with registration.requires_token, registering takes
// the m.login.registration_token stage, whose token an admin made with
// `myelin registration-token` or Synapse's admin API, served here:
// /_synapse/admin/v1/registration_tokens.

const (
	regTokenDefaultLength = 16
	regTokenAlphabet      = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"
)

// registerOp is the UIA operation of POST /register. The
// m.login.registration_token stage checks that the token is valid; its use
// is counted when the account is made (withRegistrationToken).
func (c *ClientAPI) registerOp(r *http.Request) uiaOp {
	op := uiaOp{scope: "register", flows: [][]string{{stageDummy}}, idempotent: true}
	if c.cfg.Registration.RequiresToken {
		op.flows = [][]string{{stageRegistrationToken}}
		op.registrationToken = func(d *authDict) error {
			if d.Token == "" {
				return mxhttp.MissingParam("auth.token is required")
			}
			if err := allow(c.limits.register, "token:"+mxhttp.ClientIP(r)); err != nil {
				return err
			}
			ok, err := c.users.RegistrationTokenValid(r.Context(), d.Token)
			if err != nil {
				return err
			}
			if !ok {
				return &stageFailed{code: "M_UNAUTHORIZED", msg: "Invalid registration token"}
			}
			return nil
		}
	}
	return op
}

// withRegistrationToken runs makeAccount with a use of the session's
// registration token reserved: pending while it runs, completed if it
// made the account, given back if not. Counting at the end rather than
// at the stage means an abandoned session holds no use; a token used up
// since the session passed its stage refuses the registration.
func (c *ClientAPI) withRegistrationToken(r *http.Request, att *uiaAttempt, makeAccount func() (made bool, err error)) error {
	if !c.cfg.Registration.RequiresToken {
		_, err := makeAccount()
		return err
	}
	// The counts are settled even if the client goes away meanwhile.
	ctx := context.WithoutCancel(r.Context())
	tok := att.registrationToken()
	ok, err := c.users.UseRegistrationToken(ctx, tok)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.Forbidden("The registration token is no longer valid")
	}
	made, err := makeAccount()
	if made {
		if cerr := c.users.CompleteRegistrationToken(ctx, tok); cerr != nil && err == nil {
			err = cerr
		}
		return err
	}
	if rerr := c.users.ReleaseRegistrationToken(ctx, tok); rerr != nil {
		mxhttp.Logger(ctx).WithError(rerr).Warn("giving back a registration token's pending use")
	}
	return err
}

func (c *ClientAPI) regTokenRoutes(root *mux.Router, v1 *mux.Router) {
	v1.Handle("/register/m.login.registration_token/validity", mxhttp.Handler(c.regTokenValidity)).Methods(http.MethodGet)
	const admin = "/_synapse/admin/v1/registration_tokens"
	root.Handle(admin, c.authed(c.adminOnly(c.listRegTokens))).Methods(http.MethodGet)
	root.Handle(admin+"/new", c.authed(c.adminOnly(c.newRegToken))).Methods(http.MethodPost)
	root.Handle(admin+"/{regToken}", c.authed(c.adminOnly(c.getRegToken))).Methods(http.MethodGet)
	root.Handle(admin+"/{regToken}", c.authed(c.adminOnly(c.updateRegToken))).Methods(http.MethodPut)
	root.Handle(admin+"/{regToken}", c.authed(c.adminOnly(c.deleteRegToken))).Methods(http.MethodDelete)
}

// regTokenValidity is GET /_matrix/client/v1/register/m.login.registration_token/validity.
func (c *ClientAPI) regTokenValidity(r *http.Request) (any, error) {
	if !c.cfg.Registration.Open || !c.cfg.Registration.RequiresToken {
		return nil, mxhttp.Forbidden("Registration by token is not enabled")
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		return nil, mxhttp.MissingParam("token is required")
	}
	if err := allow(c.limits.register, "token:"+mxhttp.ClientIP(r)); err != nil {
		return nil, err
	}
	if uapi.ValidRegistrationToken(token) != nil {
		return map[string]bool{"valid": false}, nil
	}
	ok, err := c.users.RegistrationTokenValid(r.Context(), token)
	if err != nil {
		return nil, err
	}
	return map[string]bool{"valid": ok}, nil
}

// adminOnly refuses users who are not server admins.
func (c *ClientAPI) adminOnly(h func(r *http.Request, dev *uapi.Device) (any, error)) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		if !dev.IsAdmin {
			return nil, mxhttp.Forbidden("You are not a server admin")
		}
		return h(r, dev)
	}
}

func (c *ClientAPI) listRegTokens(r *http.Request, dev *uapi.Device) (any, error) {
	var valid *bool
	switch v := r.URL.Query().Get("valid"); v {
	case "":
	case "true", "false":
		b := v == "true"
		valid = &b
	default:
		return nil, mxhttp.InvalidParam("valid must be true or false")
	}
	tokens, err := c.users.RegistrationTokens(r.Context(), valid)
	if err != nil {
		return nil, err
	}
	return map[string]any{"registration_tokens": tokens}, nil
}

func (c *ClientAPI) getRegToken(r *http.Request, dev *uapi.Device) (any, error) {
	t, err := c.users.RegistrationToken(r.Context(), mxhttp.Var(r, "regToken"))
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("No such registration token")
	}
	return t, err
}

// regTokenFields are the settable fields of a token. They are decoded
// from raw JSON so that null (unlimited, never) differs from absent.
type regTokenFields struct {
	usesAllowed, expiryTime       *int64
	hasUsesAllowed, hasExpiryTime bool
}

func decodeRegTokenFields(m map[string]json.RawMessage, now int64) (regTokenFields, error) {
	var f regTokenFields
	num := func(name string, dst **int64, has *bool) error {
		raw, ok := m[name]
		if !ok {
			return nil
		}
		*has = true
		if string(raw) == "null" {
			return nil
		}
		var n int64
		if err := json.Unmarshal(raw, &n); err != nil || n < 0 {
			return mxhttp.InvalidParam("%s must be a non-negative integer or null", name)
		}
		*dst = &n
		return nil
	}
	if err := num("uses_allowed", &f.usesAllowed, &f.hasUsesAllowed); err != nil {
		return f, err
	}
	if err := num("expiry_time", &f.expiryTime, &f.hasExpiryTime); err != nil {
		return f, err
	}
	if f.expiryTime != nil && *f.expiryTime < now {
		return f, mxhttp.InvalidParam("expiry_time must not be in the past")
	}
	return f, nil
}

func (c *ClientAPI) newRegToken(r *http.Request, dev *uapi.Device) (any, error) {
	var m map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &m); err != nil {
		return nil, err
	}
	f, err := decodeRegTokenFields(m, c.now().UnixMilli())
	if err != nil {
		return nil, err
	}
	t := uapi.RegistrationToken{UsesAllowed: f.usesAllowed, ExpiryTime: f.expiryTime}
	if raw, ok := m["token"]; ok {
		if err := json.Unmarshal(raw, &t.Token); err != nil || uapi.ValidRegistrationToken(t.Token) != nil {
			return nil, mxhttp.InvalidParam("token must be 1 to 64 of A-Z, a-z, 0-9 and ._~-")
		}
		if _, ok := m["length"]; ok {
			return nil, mxhttp.InvalidParam("token and length are alternatives")
		}
		if err := c.users.CreateRegistrationToken(r.Context(), t); err != nil {
			return nil, err
		}
		return t, nil
	}
	length := regTokenDefaultLength
	if raw, ok := m["length"]; ok {
		if err := json.Unmarshal(raw, &length); err != nil || length < 1 || length > 64 {
			return nil, mxhttp.InvalidParam("length must be an integer from 1 to 64")
		}
	}
	// A random token that happens to exist is drawn again.
	for i := 0; ; i++ {
		if t.Token, err = randomRegToken(length); err != nil {
			return nil, err
		}
		err = c.users.CreateRegistrationToken(r.Context(), t)
		if !errors.Is(err, uapi.ErrTokenExists) || i == 4 {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

// randomRegToken draws n characters of the token alphabet.
func randomRegToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	for i := range b {
		// 256 is 4 x 64: no bias.
		b[i] = regTokenAlphabet[int(b[i])%len(regTokenAlphabet)]
	}
	return string(b), nil
}

func (c *ClientAPI) updateRegToken(r *http.Request, dev *uapi.Device) (any, error) {
	var m map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &m); err != nil {
		return nil, err
	}
	f, err := decodeRegTokenFields(m, c.now().UnixMilli())
	if err != nil {
		return nil, err
	}
	t, err := c.users.UpdateRegistrationToken(r.Context(), mxhttp.Var(r, "regToken"), uapi.RegistrationTokenUpdate{
		SetUsesAllowed: f.hasUsesAllowed, UsesAllowed: f.usesAllowed,
		SetExpiryTime: f.hasExpiryTime, ExpiryTime: f.expiryTime,
	})
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("No such registration token")
	}
	return t, err
}

func (c *ClientAPI) deleteRegToken(r *http.Request, dev *uapi.Device) (any, error) {
	err := c.users.DeleteRegistrationToken(r.Context(), mxhttp.Var(r, "regToken"))
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("No such registration token")
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
