package clientapi

import (
	"context"
	"net/http"
	"regexp"

	"github.com/gorilla/mux"

	"myelin/internal/identity"
	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Third-party identifiers (spec: "Adding Account Administrative Contact
// Information"). Myelin sends no email or SMS and talks to no identity
// server, so no 3PID can be validated: a user has none (GET answers an
// empty list), asking for a validation token is refused with
// M_THREEPID_DENIED, adding one fails its validation, and deleting or
// unbinding one that cannot exist succeeds with nothing to unbind. The
// bodies are still checked, so a bad request gets the error it would get
// from a server that sends mail. /capabilities says m.3pid_changes false.

// clientSecretRE is the grammar of client_secret (spec: the requestToken
// endpoints), at most 255 characters.
var clientSecretRE = regexp.MustCompile(`^[0-9a-zA-Z.=_\-]{1,255}$`)

func (c *ClientAPI) threepidRoutes(r *mux.Router) {
	get, post := http.MethodGet, http.MethodPost
	r.Handle("/account/3pid", c.authed(c.threepids)).Methods(get)
	r.Handle("/account/3pid", c.authed(c.addThreepidOld)).Methods(post)
	r.Handle("/account/3pid/add", c.authed(c.addThreepid)).Methods(post)
	r.Handle("/account/3pid/bind", c.authed(c.bindThreepid)).Methods(post)
	r.Handle("/account/3pid/delete", c.authed(c.forgetThreepid)).Methods(post)
	r.Handle("/account/3pid/unbind", c.authed(c.forgetThreepid)).Methods(post)
	for _, p := range []string{"/register", "/account/3pid", "/account/password"} {
		r.Handle(p+"/email/requestToken", mxhttp.Handler(c.requestToken("email"))).Methods(post)
		r.Handle(p+"/msisdn/requestToken", mxhttp.Handler(c.requestToken("msisdn"))).Methods(post)
	}
}

func (c *ClientAPI) threepids(r *http.Request, dev *uapi.Device) (any, error) {
	return map[string]any{"threepids": []any{}}, nil
}

// tokenRequest is the body of the requestToken endpoints: email for the
// email ones, country and phone_number for the msisdn ones.
type tokenRequest struct {
	ClientSecret string `json:"client_secret"`
	SendAttempt  *int64 `json:"send_attempt"`
	Email        string `json:"email"`
	Country      string `json:"country"`
	PhoneNumber  string `json:"phone_number"`
	NextLink     string `json:"next_link"`
	IDServer     string `json:"id_server"`
}

func checkClientSecret(secret string) error {
	if secret == "" {
		return mxhttp.MissingParam("client_secret is required")
	}
	if !clientSecretRE.MatchString(secret) {
		return mxhttp.InvalidParam("client_secret must be 1 to 255 of [0-9a-zA-Z.=_-]")
	}
	return nil
}

// requestToken answers the requestToken endpoints of medium: the body is
// checked, then refused, since this server cannot send the token.
func (c *ClientAPI) requestToken(medium string) func(r *http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		var req tokenRequest
		if err := mxhttp.ReadJSON(r, &req); err != nil {
			return nil, err
		}
		if err := checkClientSecret(req.ClientSecret); err != nil {
			return nil, err
		}
		if req.SendAttempt == nil {
			return nil, mxhttp.MissingParam("send_attempt is required")
		}
		switch {
		case medium == "email" && req.Email == "":
			return nil, mxhttp.MissingParam("email is required")
		case medium == "msisdn" && (req.Country == "" || req.PhoneNumber == ""):
			return nil, mxhttp.MissingParam("country and phone_number are required")
		}
		what := "email"
		if medium == "msisdn" {
			what = "text messages"
		}
		return nil, mxhttp.New("M_THREEPID_DENIED", "This server does not send %s, so it cannot validate third-party identifiers", what)
	}
}

type threepidAddRequest struct {
	ClientSecret string `json:"client_secret"`
	SID          string `json:"sid"`
}

// addThreepid is POST /account/3pid/add: after the user's password, the
// validation session sid is looked for, and never found.
func (c *ClientAPI) addThreepid(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var req threepidAddRequest
	if challenge, err := c.passwordAuth(r, dev, "3pid add", body, &req); challenge != nil || err != nil {
		return challenge, err
	}
	if err := checkClientSecret(req.ClientSecret); err != nil {
		return nil, err
	}
	if req.SID == "" {
		return nil, mxhttp.MissingParam("sid is required")
	}
	return nil, errNoValidation()
}

func errNoValidation() error {
	// 400, as Synapse answers a session that was not validated: 401 would
	// read as a UIA challenge.
	return mxhttp.New("M_THREEPID_AUTH_FAILED", "No validated third-party identifier for this session").WithStatus(http.StatusBadRequest)
}

// addThreepidOld is the deprecated POST /account/3pid, which names the
// validation session in three_pid_creds.
func (c *ClientAPI) addThreepidOld(r *http.Request, dev *uapi.Device) (any, error) {
	var req struct {
		Creds *threepidAddRequest `json:"three_pid_creds"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Creds == nil {
		return nil, mxhttp.MissingParam("three_pid_creds is required")
	}
	if err := checkClientSecret(req.Creds.ClientSecret); err != nil {
		return nil, err
	}
	// 403 here, as the spec has this endpoint answer.
	return nil, mxhttp.New("M_THREEPID_AUTH_FAILED", "No validated third-party identifier for this session").WithStatus(http.StatusForbidden)
}

// bindThreepid is POST /account/3pid/bind: the identity server named
// binds the 3PID it validated in the session to the user, and this server
// records where, to unbind it later.
func (c *ClientAPI) bindThreepid(r *http.Request, dev *uapi.Device) (any, error) {
	var req struct {
		ClientSecret  string `json:"client_secret"`
		IDAccessToken string `json:"id_access_token"`
		IDServer      string `json:"id_server"`
		SID           string `json:"sid"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if err := checkClientSecret(req.ClientSecret); err != nil {
		return nil, err
	}
	if req.IDServer == "" || req.IDAccessToken == "" || req.SID == "" {
		return nil, mxhttp.MissingParam("id_server, id_access_token and sid are required")
	}
	if err := identity.CheckServer(req.IDServer); err != nil {
		return nil, mxhttp.InvalidParam("%v", err)
	}
	if len(req.SID) > maxThirdPartyField || len(req.IDAccessToken) > maxThirdPartyField {
		return nil, mxhttp.InvalidParam("sid and id_access_token must be at most %d bytes", maxThirdPartyField)
	}
	if c.ids == nil {
		return nil, mxhttp.New("M_THREEPID_DENIED", "This server does not bind third-party identifiers with identity servers")
	}
	medium, address, err := c.ids.Bind(r.Context(), req.IDServer, req.IDAccessToken, req.SID, req.ClientSecret, dev.UserID)
	if err != nil {
		return nil, identityError(err)
	}
	if err := c.users.AddThreepidBinding(r.Context(), dev.UserID, uapi.ThreepidBinding{Medium: medium, Address: address, IDServer: req.IDServer}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// forgetThreepid is POST /account/3pid/delete and /unbind. The user has
// no 3PID on the account here (no mail or SMS service validates one), so
// deleting is unbinding: from the identity server named, or else from
// each one it was bound on through this server.
func (c *ClientAPI) forgetThreepid(r *http.Request, dev *uapi.Device) (any, error) {
	var req struct {
		Medium   string `json:"medium"`
		Address  string `json:"address"`
		IDServer string `json:"id_server"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Medium == "" || req.Address == "" {
		return nil, mxhttp.MissingParam("medium and address are required")
	}
	if req.IDServer != "" {
		if err := identity.CheckServer(req.IDServer); err != nil {
			return nil, mxhttp.InvalidParam("%v", err)
		}
	}
	var bindings []uapi.ThreepidBinding
	if req.IDServer != "" {
		bindings = []uapi.ThreepidBinding{{Medium: req.Medium, Address: req.Address, IDServer: req.IDServer}}
	} else {
		var err error
		if bindings, err = c.users.ThreepidBindings(r.Context(), dev.UserID, req.Medium, req.Address); err != nil {
			return nil, err
		}
	}
	return map[string]string{"id_server_unbind_result": c.unbind(r.Context(), dev.UserID, bindings)}, nil
}

// unbind removes bindings at their identity servers: "success" when each
// one did, "no-support" when there were none or one could not.
func (c *ClientAPI) unbind(ctx context.Context, userID string, bindings []uapi.ThreepidBinding) string {
	if c.ids == nil || len(bindings) == 0 {
		return "no-support"
	}
	result := "success"
	for _, b := range bindings {
		if err := c.ids.Unbind(ctx, b.IDServer, userID, b.Medium, b.Address); err != nil {
			mxhttp.Logger(ctx).WithError(err).WithField("id_server", b.IDServer).Warn("3PID unbind failed")
			result = "no-support"
			continue
		}
		if err := c.users.RemoveThreepidBinding(ctx, userID, b); err != nil {
			result = "no-support"
		}
	}
	return result
}
