package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// turnServer is GET /voip/turnServer: the TURN servers of the
// configuration and credentials for them. With a shared secret the
// credentials are the TURN REST API's (coturn's use-auth-secret): the
// username is "<expiry unix seconds>:<user ID>" and the password the
// base64 HMAC-SHA1 of that username keyed with the secret, so the TURN
// server checks them without asking us. Without URIs, {} (as Synapse),
// which clients read as "no TURN server".
func (c *ClientAPI) turnServer(r *http.Request, dev *uapi.Device) (any, error) {
	t := c.cfg.ClientAPI.TURN
	if len(t.URIs) == 0 {
		return struct{}{}, nil
	}
	if dev.IsGuest && !t.AllowGuests {
		return nil, mxhttp.New("M_GUEST_ACCESS_FORBIDDEN", "Guests may not use the TURN servers")
	}
	ttl := int64(t.UserLifetime.Seconds())
	username, password := t.Username, t.Password
	if t.SharedSecret != "" {
		username = strconv.FormatInt(c.now().Unix()+ttl, 10) + ":" + dev.UserID
		m := hmac.New(sha1.New, []byte(t.SharedSecret))
		m.Write([]byte(username))
		password = base64.StdEncoding.EncodeToString(m.Sum(nil))
	}
	return map[string]any{"username": username, "password": password, "uris": t.URIs, "ttl": ttl}, nil
}
