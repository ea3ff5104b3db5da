package clientapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Profiles (displayname and avatar_url) and account data.

const (
	fieldDisplayName = "displayname"
	fieldAvatarURL   = "avatar_url"

	// Synapse's limits: a display name in characters, an avatar URL in bytes.
	maxDisplayNameLen = 256
	maxAvatarURLLen   = 1000
	// maxAccountDataTypeLen bounds account-data type names.
	maxAccountDataTypeLen = 255
)

// looksLikeID reports whether s has the shape of a Matrix ID with sigil:
// the sigil, a non-empty local part, ':' and a server name.
func looksLikeID(s string, sigil byte) bool {
	if len(s) < 4 || s[0] != sigil || len(s) > 255 {
		return false
	}
	i := strings.IndexByte(s, ':')
	return i > 1 && i < len(s)-1
}

// profileOf returns userID's profile, or M_NOT_FOUND; field ("" for
// both) is what the client asked for. A user of another server is asked
// of that server (spec: federation "Query" of profile).
func (c *ClientAPI) profileOf(r *http.Request, userID, field string) (*uapi.Profile, error) {
	if !looksLikeID(userID, '@') {
		return nil, mxhttp.InvalidParam("%q is not a user ID", userID)
	}
	if u, err := spec.NewUserID(userID, true); err == nil && u.Domain() != spec.ServerName(c.cfg.ServerName) && c.fed != nil {
		p, err := c.fed.Profile(r.Context(), userID, field)
		if err != nil {
			return nil, remoteFailed(u.Domain(), err)
		}
		return p, nil
	}
	p, err := c.users.Profile(r.Context(), userID)
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("Profile not found")
	}
	return p, err
}

// getProfile is GET /profile/{userId}. A profile with no field set (as
// after deactivation) is "no profile information", a 404, as in Synapse.
func (c *ClientAPI) getProfile(r *http.Request) (any, error) {
	p, err := c.profileOf(r, mxhttp.Var(r, "userId"), "")
	if err != nil {
		return nil, err
	}
	if *p == (uapi.Profile{}) {
		return nil, mxhttp.NotFound("Profile not found")
	}
	return p, nil
}

// getProfileField is GET /profile/{userId}/{field}; an unset field is {}.
func (c *ClientAPI) getProfileField(field string) mxhttp.Handler {
	return func(r *http.Request) (any, error) {
		p, err := c.profileOf(r, mxhttp.Var(r, "userId"), field)
		if err != nil {
			return nil, err
		}
		v := p.DisplayName
		if field == fieldAvatarURL {
			v = p.AvatarURL
		}
		if v == "" {
			return struct{}{}, nil
		}
		return map[string]string{field: v}, nil
	}
}

// setProfileField is PUT /profile/{userId}/{field}: a string sets it, null
// clears it. Members events in the user's rooms follow the change.
func (c *ClientAPI) setProfileField(field string) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		if mxhttp.Var(r, "userId") != dev.UserID {
			return nil, mxhttp.Forbidden("You can only change your own profile")
		}
		var body map[string]json.RawMessage
		if err := mxhttp.ReadJSON(r, &body); err != nil {
			return nil, err
		}
		raw, ok := body[field]
		if !ok {
			return nil, mxhttp.MissingParam("%s is required", field)
		}
		var v *string
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, mxhttp.BadJSON("%s must be a string", field)
		}
		value := ""
		if v != nil {
			value = *v
		}
		var name, avatar *string
		switch field {
		case fieldDisplayName:
			if utf8.RuneCountInString(value) > maxDisplayNameLen {
				return nil, mxhttp.InvalidParam("displayname is longer than %d characters", maxDisplayNameLen)
			}
			name = &value
		case fieldAvatarURL:
			if len(value) > maxAvatarURLLen {
				return nil, mxhttp.InvalidParam("avatar_url is longer than %d bytes", maxAvatarURLLen)
			}
			avatar = &value
		}
		if err := c.users.SetProfile(r.Context(), dev.UserID, name, avatar); err != nil {
			return nil, err
		}
		if err := c.propagateProfile(r.Context(), dev.UserID); err != nil {
			// The profile is changed; room member events catch up at the
			// next change.
			mxhttp.Logger(r.Context()).WithError(err).WithField("user_id", dev.UserID).Warn("propagating profile change to rooms")
		}
		return struct{}{}, nil
	}
}

// accountDataTarget checks an account-data path: the caller's own user ID,
// a room ID if there is one, a type of sane length.
func accountDataTarget(r *http.Request, dev *uapi.Device) (roomID, dataType string, err error) {
	if mxhttp.Var(r, "userId") != dev.UserID {
		return "", "", mxhttp.Forbidden("You can only access your own account data")
	}
	roomID, dataType = mxhttp.Var(r, "roomId"), mxhttp.Var(r, "type")
	if _, inRoom := mux.Vars(r)["roomId"]; inRoom {
		// Not looksLikeID: from room version 12 room IDs have no server
		// name.
		if _, err := spec.NewRoomID(roomID); err != nil || len(roomID) > 255 {
			return "", "", mxhttp.InvalidParam("%q is not a room ID", roomID)
		}
	}
	if len(dataType) > maxAccountDataTypeLen {
		return "", "", mxhttp.InvalidParam("type is longer than %d bytes", maxAccountDataTypeLen)
	}
	return roomID, dataType, nil
}

func (c *ClientAPI) getAccountData(r *http.Request, dev *uapi.Device) (any, error) {
	roomID, dataType, err := accountDataTarget(r, dev)
	if err != nil {
		return nil, err
	}
	content, err := c.users.AccountData(r.Context(), dev.UserID, roomID, dataType)
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("Account data not found")
	}
	if err != nil {
		return nil, err
	}
	return content, nil
}

// putAccountData stores a JSON object as account data. The types the server
// maintains itself cannot be set this way (405 M_BAD_JSON, per the spec).
func (c *ClientAPI) putAccountData(r *http.Request, dev *uapi.Device) (any, error) {
	roomID, dataType, err := accountDataTarget(r, dev)
	if err != nil {
		return nil, err
	}
	if (roomID == "" && dataType == "m.push_rules") || (roomID != "" && dataType == "m.fully_read") {
		return nil, mxhttp.BadJSON("Cannot set %s through this API", dataType).WithStatus(http.StatusMethodNotAllowed)
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSON(body, &obj); err != nil {
		return nil, err
	}
	if _, err := c.users.SetAccountData(r.Context(), dev.UserID, roomID, dataType, mxhttp.TrimJSONSpace(body)); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
