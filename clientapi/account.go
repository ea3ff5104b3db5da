package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Registration, login and logout, password change and deactivation, and
// Synapse's shared-secret registration. Devices are in account_devices.go,
// profiles and account data in account_data.go.

const (
	// maxPasswordLen matches Synapse: longer is refused before hashing.
	maxPasswordLen = 512
	// maxDeviceIDLen keeps device IDs to a sane size; clients use ~10.
	maxDeviceIDLen = 255
	// maxDeviceNameLen is Synapse's limit on device display names, in
	// characters.
	maxDeviceNameLen = 100

	nonceTTL  = 5 * time.Minute
	maxNonces = 10_000
)

// accountRoutes registers registration, login, devices, profile and
// account data.
func (c *ClientAPI) accountRoutes(r *mux.Router) {
	get, put, post, del := http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete
	r.Handle("/register", mxhttp.Handler(c.register)).Methods(post)
	r.Handle("/register/available", mxhttp.Handler(c.registerAvailable)).Methods(get)
	r.Handle("/login", mxhttp.Handler(c.loginFlows)).Methods(get)
	r.Handle("/login", mxhttp.Handler(c.login)).Methods(post)
	// An expired access token may still log out.
	r.Handle("/logout", mxhttp.Authenticated(c.users.DeviceByTokenForLogout, c.logout)).Methods(post)
	r.Handle("/logout/all", mxhttp.Authenticated(c.users.DeviceByTokenForLogout, c.logoutAll)).Methods(post)
	r.Handle("/account/whoami", c.authedGuest(c.whoami)).Methods(get)
	r.Handle("/account/password", c.authed(c.changePassword)).Methods(post)
	r.Handle("/account/deactivate", c.authed(c.deactivate)).Methods(post)
	r.Handle("/voip/turnServer", c.authedGuest(c.turnServer)).Methods(get)
	c.threepidRoutes(r)
	c.tokenRoutes(r)

	r.Handle("/devices", c.authed(c.listDevices)).Methods(get)
	r.Handle("/admin/whois/{userId}", c.authed(c.whois)).Methods(get)
	r.Handle("/devices/{deviceId}", c.authed(c.getDevice)).Methods(get)
	r.Handle("/devices/{deviceId}", c.authed(c.updateDevice)).Methods(put)
	r.Handle("/devices/{deviceId}", c.authed(c.deleteDevice)).Methods(del)
	r.Handle("/delete_devices", c.authed(c.deleteDevices)).Methods(post)

	r.Handle("/profile/{userId}", mxhttp.Handler(c.getProfile)).Methods(get)
	for _, field := range []string{fieldDisplayName, fieldAvatarURL} {
		r.Handle("/profile/{userId}/"+field, mxhttp.Handler(c.getProfileField(field))).Methods(get)
		r.Handle("/profile/{userId}/"+field, c.authedGuest(c.setProfileField(field))).Methods(put)
	}

	r.Handle("/user/{userId}/account_data/{type}", c.authedGuest(c.getAccountData)).Methods(get)
	r.Handle("/user/{userId}/account_data/{type}", c.authedGuest(c.putAccountData)).Methods(put)
	r.Handle("/user/{userId}/rooms/{roomId}/account_data/{type}", c.authedGuest(c.getAccountData)).Methods(get)
	r.Handle("/user/{userId}/rooms/{roomId}/account_data/{type}", c.authedGuest(c.putAccountData)).Methods(put)
}

// loginResponse answers /login, /register and shared-secret registration.
type loginResponse struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token,omitempty"`
	DeviceID    string `json:"device_id,omitempty"`
	HomeServer  string `json:"home_server"`
	// RefreshToken and ExpiresInMS are there when the client asked for a
	// refresh token and the server gives them.
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresInMS  int64  `json:"expires_in_ms,omitempty"`
}

// deviceFields are the device fields of /login and /register.
type deviceFields struct {
	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
	// RefreshToken asks for an expiring access token and a refresh token.
	RefreshToken bool `json:"refresh_token"`
}

func (d deviceFields) validate() error {
	if len(d.DeviceID) > maxDeviceIDLen {
		return mxhttp.InvalidParam("device_id is longer than %d bytes", maxDeviceIDLen)
	}
	return checkDeviceName("initial_device_display_name", d.InitialDeviceDisplayName)
}

func checkDeviceName(field, name string) error {
	if utf8.RuneCountInString(name) > maxDeviceNameLen {
		return mxhttp.InvalidParam("%s is longer than %d characters", field, maxDeviceNameLen)
	}
	return nil
}

// logIn makes a device for userID and the response that hands it out.
func (c *ClientAPI) logIn(r *http.Request, userID string, d deviceFields) (*loginResponse, error) {
	req := uapi.CreateDeviceRequest{
		UserID:      userID,
		DeviceID:    d.DeviceID,
		DisplayName: d.InitialDeviceDisplayName,
		IP:          mxhttp.ClientIP(r),
		UserAgent:   r.UserAgent(),
	}
	if d.RefreshToken {
		req.RefreshLifetime = c.cfg.ClientAPI.AccessTokenLifetime
	}
	dev, tokens, err := c.users.CreateDevice(r.Context(), req)
	if err != nil {
		return nil, err
	}
	resp := &loginResponse{UserID: userID, AccessToken: tokens.Access, DeviceID: dev.DeviceID, HomeServer: c.cfg.ServerName}
	c.setExpiry(resp, tokens)
	return resp, nil
}

// usernameError gives an invalid-username error its detailed message.
func usernameError(err error) error {
	if errors.Is(err, uapi.ErrInvalidUsername) {
		return mxhttp.InvalidUsername("%s", err.Error())
	}
	return err
}

type registerRequest struct {
	deviceFields
	Username     string `json:"username"`
	Password     string `json:"password"`
	InhibitLogin bool   `json:"inhibit_login"`
	// GuestAccessToken upgrades the guest it belongs to into this account.
	GuestAccessToken string `json:"guest_access_token"`
}

func (q *registerRequest) Validate() error {
	if len(q.Password) > maxPasswordLen {
		return mxhttp.InvalidParam("password is longer than %d bytes", maxPasswordLen)
	}
	return q.deviceFields.validate()
}

// register is POST /register: open registration with m.login.dummy.
//
// Registration is idempotent within its UIA session, as in Synapse: a
// client that lost the response of the request that made its account
// repeats it and is logged in to that account again, rather than told the
// name is taken (or, without a username, given a second account). So until
// the session expires, its ID logs in to the account it made; it is as
// secret as the password the client sent with it.
func (c *ClientAPI) register(r *http.Request) (any, error) {
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "user":
	case "guest":
		return c.registerGuest(r)
	default:
		return nil, mxhttp.InvalidParam("kind must be user or guest, not %q", kind)
	}
	if !c.cfg.Registration.Open {
		return nil, mxhttp.Forbidden("Registration is disabled")
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var req registerRequest
	att, err := c.uia.open(c.registerOp(r), body, &req)
	if err != nil {
		return nil, err
	}
	// Synapse lowercases the requested name (sytest checks it does).
	localpart := strings.ToLower(req.Username)
	if req.GuestAccessToken != "" {
		return c.upgradeGuest(r, att, localpart, &req)
	}
	// A taken or bad name fails before the client does any stage, unless
	// this session took it.
	if err := c.checkRegistration(r, localpart, att.outcome()); err != nil {
		return nil, err
	}
	if challenge, err := att.run(); challenge != nil || err != nil {
		return challenge, err
	}
	unlock, err := att.lock(r.Context())
	if err != nil {
		return nil, err
	}
	defer unlock()
	userID := att.outcome()
	if userID != "" {
		if err := c.checkRegistration(r, localpart, userID); err != nil {
			return nil, err
		}
	} else {
		if req.Password == "" {
			return nil, mxhttp.MissingParam("password is required")
		}
		if err := allow(c.limits.register, mxhttp.ClientIP(r)); err != nil {
			return nil, err
		}
		var acct *uapi.Account
		err := c.withRegistrationToken(r, att, func() (bool, error) {
			var err error
			acct, err = c.users.CreateAccount(r.Context(), uapi.CreateAccountRequest{Localpart: localpart, Password: req.Password})
			return err == nil, err
		})
		if err != nil {
			return nil, usernameError(err)
		}
		userID = acct.UserID
		if err := att.succeed(userID); err != nil {
			return nil, err
		}
	}
	if req.InhibitLogin {
		return &loginResponse{UserID: userID, HomeServer: c.cfg.ServerName}, nil
	}
	return c.logIn(r, userID, req.deviceFields)
}

// checkRegistration checks the name a registration asks for (localpart, or
// "" for a number). A session that made its account already (registered is
// its user ID) may ask only for that account again; otherwise the name must
// be valid and free.
func (c *ClientAPI) checkRegistration(r *http.Request, localpart, registered string) error {
	switch {
	case registered == "":
		if localpart == "" {
			return nil
		}
		return c.checkAvailable(r, localpart)
	case localpart == "" || "@"+localpart+":"+c.cfg.ServerName == registered:
		return nil
	default:
		return mxhttp.Forbidden("This session registered %s, not %s", registered, localpart)
	}
}

// checkAvailable answers M_INVALID_USERNAME or M_USER_IN_USE for a
// localpart that cannot be registered.
func (c *ClientAPI) checkAvailable(r *http.Request, localpart string) error {
	if err := uapi.ValidLocalpart(localpart, c.cfg.ServerName); err != nil {
		return usernameError(err)
	}
	_, err := c.users.Account(r.Context(), "@"+localpart+":"+c.cfg.ServerName)
	switch {
	case err == nil:
		return mxhttp.UserInUse()
	case uapi.IsNotFound(err):
		return nil
	default:
		return err
	}
}

// registerAvailable is GET /register/available.
func (c *ClientAPI) registerAvailable(r *http.Request) (any, error) {
	if !c.cfg.Registration.Open {
		return nil, mxhttp.Forbidden("Registration is disabled")
	}
	username := r.URL.Query().Get("username")
	if username == "" {
		return nil, mxhttp.MissingParam("username is required")
	}
	if err := c.checkAvailable(r, username); err != nil {
		return nil, err
	}
	return map[string]bool{"available": true}, nil
}

// loginFlows is GET /login: passwords, and login tokens when
// /login/get_token hands them out (get_login_token says it does).
func (c *ClientAPI) loginFlows(r *http.Request) (any, error) {
	flows := []map[string]any{{"type": stagePassword}}
	if c.loginTokensEnabled() {
		flows = append(flows, map[string]any{"type": loginTypeToken, "get_login_token": true})
	}
	return map[string]any{"flows": flows}, nil
}

type loginRequest struct {
	deviceFields
	Type       string          `json:"type"`
	Identifier *userIdentifier `json:"identifier"`
	User       string          `json:"user"` // deprecated form of identifier
	Password   string          `json:"password"`
	Token      string          `json:"token"`
}

func (q *loginRequest) Validate() error {
	if q.Type != stagePassword && q.Type != loginTypeToken {
		return mxhttp.Unknown("Unknown login type %q", q.Type)
	}
	return q.deviceFields.validate()
}

// login is POST /login with m.login.password.
func (c *ClientAPI) login(r *http.Request) (any, error) {
	if err := allow(c.limits.login, "ip:"+mxhttp.ClientIP(r)); err != nil {
		return nil, err
	}
	var req loginRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Type == loginTypeToken {
		return c.loginWithToken(r, &req)
	}
	name := req.User
	if req.Identifier != nil {
		if req.Identifier.Type != "m.id.user" {
			return nil, mxhttp.Unknown("Unsupported identifier type %q", req.Identifier.Type)
		}
		name = req.Identifier.User
	}
	if name == "" {
		return nil, mxhttp.MissingParam("identifier.user is required")
	}
	userID, ok := c.localUserID(name)
	if !ok {
		return nil, uapi.ErrBadPassword
	}
	if err := allow(c.limits.login, "user:"+userID); err != nil {
		return nil, err
	}
	if _, err := c.users.CheckPassword(r.Context(), userID, req.Password); err != nil {
		return nil, err
	}
	return c.logIn(r, userID, req.deviceFields)
}

// localUserID turns what a user typed to log in (a localpart or a user ID)
// into a user ID of this server. Localparts of new accounts are lower case,
// so the name is lowercased, as Synapse matches it case-insensitively.
func (c *ClientAPI) localUserID(name string) (string, bool) {
	localpart := name
	if strings.HasPrefix(name, "@") {
		lp, server, ok := strings.Cut(name[1:], ":")
		if !ok || server != c.cfg.ServerName {
			return "", false
		}
		localpart = lp
	}
	if localpart == "" {
		return "", false
	}
	return "@" + strings.ToLower(localpart) + ":" + c.cfg.ServerName, true
}

func (c *ClientAPI) logout(r *http.Request, dev *uapi.Device) (any, error) {
	if err := c.users.DeleteDevices(r.Context(), dev.UserID, []string{dev.DeviceID}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (c *ClientAPI) logoutAll(r *http.Request, dev *uapi.Device) (any, error) {
	if err := c.users.DeleteDevices(r.Context(), dev.UserID, nil); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (c *ClientAPI) whoami(r *http.Request, dev *uapi.Device) (any, error) {
	return map[string]any{"user_id": dev.UserID, "device_id": dev.DeviceID, "is_guest": dev.IsGuest}, nil
}

// passwordStage checks an m.login.password stage for requests of userID:
// the stage must name that user (or no one) and carry their password.
func (c *ClientAPI) passwordStage(r *http.Request, userID string) func(d *authDict) error {
	return func(d *authDict) error {
		name := d.User
		if d.Identifier.Type != "" || d.Identifier.User != "" {
			if d.Identifier.Type != "m.id.user" {
				return mxhttp.Unknown("Unsupported identifier type %q", d.Identifier.Type)
			}
			name = d.Identifier.User
		}
		if name != "" {
			if id, ok := c.localUserID(name); !ok || id != userID {
				return mxhttp.Forbidden("You can only authenticate as the user of the access token")
			}
		}
		if err := allow(c.limits.login, "user:"+userID); err != nil {
			return err
		}
		_, err := c.users.CheckPassword(r.Context(), userID, d.Password)
		if errors.Is(err, uapi.ErrBadPassword) {
			return &stageFailed{code: "M_FORBIDDEN", msg: "Invalid password"}
		}
		return err
	}
}

// passwordUIA decodes a request body into v and opens its part in
// user-interactive auth with one m.login.password flow, for an operation
// (op) of dev's user.
func (c *ClientAPI) passwordUIA(r *http.Request, dev *uapi.Device, op string, body []byte, v any) (*uiaAttempt, error) {
	return c.uia.open(uiaOp{
		scope:    op + " " + dev.UserID,
		flows:    [][]string{{stagePassword}},
		password: c.passwordStage(r, dev.UserID),
	}, body, v)
}

// passwordAuth is passwordUIA for operations with nothing to check before
// the user authenticates: it returns (nil, nil) once they have.
func (c *ClientAPI) passwordAuth(r *http.Request, dev *uapi.Device, op string, body []byte, v any) (*mxhttp.Response, error) {
	att, err := c.passwordUIA(r, dev, op, body, v)
	if err != nil {
		return nil, err
	}
	return att.run()
}

type passwordRequest struct {
	NewPassword   string `json:"new_password"`
	LogoutDevices *bool  `json:"logout_devices"`
}

func (q *passwordRequest) Validate() error {
	if len(q.NewPassword) > maxPasswordLen {
		return mxhttp.InvalidParam("new_password is longer than %d bytes", maxPasswordLen)
	}
	return nil
}

// changePassword is POST /account/password. Other devices are logged out
// unless logout_devices is false; the device making the request stays.
func (c *ClientAPI) changePassword(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var req passwordRequest
	if challenge, err := c.passwordAuth(r, dev, "password", body, &req); challenge != nil || err != nil {
		return challenge, err
	}
	if req.NewPassword == "" {
		return nil, mxhttp.MissingParam("new_password is required")
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	if err := c.users.SetPassword(r.Context(), dev.UserID, req.NewPassword, logout, dev.DeviceID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deactivate is POST /account/deactivate: the user leaves their rooms, then
// the account is disabled and its devices deleted.
func (c *ClientAPI) deactivate(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	// No third-party IDs are bound for id_server to name.
	var req struct {
		Erase bool `json:"erase"`
	}
	if challenge, err := c.passwordAuth(r, dev, "deactivate", body, &req); challenge != nil || err != nil {
		return challenge, err
	}
	if req.Erase {
		// As Synapse: the profile is cleared while the user is still in
		// their rooms, so their member events lose name and avatar too.
		empty := ""
		if err := c.users.SetProfile(r.Context(), dev.UserID, &empty, &empty); err != nil {
			return nil, err
		}
		if err := c.propagateProfile(r.Context(), dev.UserID); err != nil {
			// The leaves below carry no profile either.
			mxhttp.Logger(r.Context()).WithError(err).WithField("user_id", dev.UserID).Warn("clearing an erased user's room profiles")
		}
	}
	if err := c.leaveAllRooms(r.Context(), dev.UserID); err != nil {
		return nil, err
	}
	// The 3PIDs bound through this server are unbound first (spec: they
	// are removed from the identity servers on deactivation).
	bindings, err := c.users.ThreepidBindings(r.Context(), dev.UserID, "", "")
	if err != nil {
		return nil, err
	}
	result := c.unbind(r.Context(), dev.UserID, bindings)
	if err := c.users.Deactivate(r.Context(), dev.UserID, req.Erase); err != nil {
		return nil, err
	}
	return map[string]string{"id_server_unbind_result": result}, nil
}

// sharedSecretNonce is GET /_synapse/admin/v1/register.
func (c *ClientAPI) sharedSecretNonce(r *http.Request) (any, error) {
	if c.cfg.Registration.SharedSecret == "" {
		return nil, errSharedSecretDisabled()
	}
	nonce, err := c.nonces.add(struct{}{})
	if err != nil {
		return nil, err
	}
	return map[string]string{"nonce": nonce}, nil
}

func errSharedSecretDisabled() error {
	return mxhttp.Unknown("Shared secret registration is not enabled")
}

type sharedSecretRequest struct {
	Nonce       string `json:"nonce"`
	Username    string `json:"username"`
	DisplayName string `json:"displayname"`
	Password    string `json:"password"`
	Admin       bool   `json:"admin"`
	UserType    string `json:"user_type"`
	MAC         string `json:"mac"`
}

func (q *sharedSecretRequest) Validate() error {
	for _, f := range []struct{ name, v string }{
		{"nonce", q.Nonce}, {"username", q.Username}, {"password", q.Password}, {"mac", q.MAC},
	} {
		if f.v == "" {
			return mxhttp.MissingParam("%s is required", f.name)
		}
	}
	if len(q.Password) > maxPasswordLen {
		return mxhttp.InvalidParam("password is longer than %d bytes", maxPasswordLen)
	}
	if strings.ContainsRune(q.Username+q.Password+q.UserType, 0) {
		return mxhttp.InvalidParam("fields must not contain NUL")
	}
	return nil
}

// mac is what the client must have signed: HMAC-SHA1 keyed with the shared
// secret over nonce, username, password, admin flag and (when given) user
// type, NUL-separated, as Synapse's register_new_matrix_user computes it.
func (q *sharedSecretRequest) mac(secret string) string {
	m := hmac.New(sha1.New, []byte(secret))
	admin := "notadmin"
	if q.Admin {
		admin = "admin"
	}
	parts := []string{q.Nonce, q.Username, q.Password, admin}
	if q.UserType != "" {
		parts = append(parts, q.UserType)
	}
	m.Write([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(m.Sum(nil))
}

// sharedSecretRegister is POST /_synapse/admin/v1/register, which works
// whether or not registration is open: holding the secret is the
// authorisation.
func (c *ClientAPI) sharedSecretRegister(r *http.Request) (any, error) {
	secret := c.cfg.Registration.SharedSecret
	if secret == "" {
		return nil, errSharedSecretDisabled()
	}
	var req sharedSecretRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	// A nonce is used up by any attempt, right or wrong.
	if _, ok := c.nonces.take(req.Nonce); !ok {
		return nil, mxhttp.Unknown("Unrecognised nonce")
	}
	if !hmac.Equal([]byte(req.mac(secret)), []byte(strings.ToLower(req.MAC))) {
		return nil, mxhttp.Forbidden("HMAC incorrect")
	}
	acct, err := c.users.CreateAccount(r.Context(), uapi.CreateAccountRequest{
		Localpart: strings.ToLower(req.Username),
		Password:  req.Password,
		IsAdmin:   req.Admin,
	})
	if err != nil {
		return nil, usernameError(err)
	}
	if req.DisplayName != "" {
		if err := c.users.SetProfile(r.Context(), acct.UserID, &req.DisplayName, nil); err != nil {
			return nil, err
		}
	}
	return c.logIn(r, acct.UserID, deviceFields{})
}
