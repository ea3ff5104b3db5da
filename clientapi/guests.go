package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Guest accounts (spec: "Guest Access") are registered without
// credentials, may join only rooms whose m.room.guest_access is can_join,
// and use only the endpoints authedGuest marks; everything else answers
// M_GUEST_ACCESS_FORBIDDEN.

func (c *ClientAPI) registerGuest(r *http.Request) (any, error) {
	if !c.cfg.Registration.AllowGuests {
		return nil, mxhttp.New("M_GUEST_ACCESS_FORBIDDEN", "Guest access is not enabled")
	}
	var req struct {
		deviceFields
	}
	b, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if len(b) > 0 {
		if err := mxhttp.DecodeJSON(b, &req); err != nil {
			return nil, err
		}
	}
	if err := allow(c.limits.register, mxhttp.ClientIP(r)); err != nil {
		return nil, err
	}
	acct, err := c.users.CreateAccount(r.Context(), uapi.CreateAccountRequest{IsGuest: true})
	if err != nil {
		return nil, err
	}
	return c.logIn(r, acct.UserID, req.deviceFields)
}

// upgradeGuest makes the guest of req.GuestAccessToken a full account with
// req's password once the UIA stages are done.
func (c *ClientAPI) upgradeGuest(r *http.Request, att *uiaAttempt, localpart string, req *registerRequest) (any, error) {
	guest, err := c.users.DeviceByToken(r.Context(), req.GuestAccessToken)
	if err != nil || !guest.IsGuest {
		return nil, mxhttp.Forbidden("guest_access_token is not a guest's access token")
	}
	if localpart != "" && "@"+localpart+":"+c.cfg.ServerName != guest.UserID {
		return nil, mxhttp.Forbidden("a guest can only be upgraded to its own user ID")
	}
	if req.Password == "" {
		return nil, mxhttp.MissingParam("password is required")
	}
	if challenge, err := att.run(); challenge != nil || err != nil {
		return challenge, err
	}
	err = c.withRegistrationToken(r, att, func() (bool, error) {
		err := c.users.UpgradeGuest(r.Context(), guest.UserID, req.Password)
		if uapi.IsNotFound(err) {
			// Upgraded already, by a request this one repeats.
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return nil, err
	}
	if req.InhibitLogin {
		return &loginResponse{UserID: guest.UserID, HomeServer: c.cfg.ServerName}, nil
	}
	return c.logIn(r, guest.UserID, req.deviceFields)
}

// authedGuest wraps a handler guests may use too; c.authed refuses them.
func (c *ClientAPI) authedGuest(h func(r *http.Request, dev *uapi.Device) (any, error)) mxhttp.Handler {
	return mxhttp.Authenticated(c.users.DeviceByToken, h)
}
