package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/tidwall/gjson"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// roomKeyRoutes are server-side key backup (spec: "Server-side key
// backups"): backup versions, and the room keys in them at three levels
// (all, one room, one session).
func (c *ClientAPI) roomKeyRoutes(r *mux.Router) {
	r.Handle("/room_keys/version", c.authed(c.createKeyBackup)).Methods(http.MethodPost)
	r.Handle("/room_keys/version", c.authed(c.keyBackupInfo)).Methods(http.MethodGet)
	r.Handle("/room_keys/version/{version}", c.authed(c.keyBackupInfo)).Methods(http.MethodGet)
	r.Handle("/room_keys/version/{version}", c.authed(c.updateKeyBackup)).Methods(http.MethodPut)
	r.Handle("/room_keys/version/{version}", c.authed(c.deleteKeyBackup)).Methods(http.MethodDelete)
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{backupRoomId}", "/room_keys/keys/{backupRoomId}/{sessionId}"} {
		r.Handle(p, c.authed(c.putBackupKeys)).Methods(http.MethodPut)
		r.Handle(p, c.authed(c.getBackupKeys)).Methods(http.MethodGet)
		r.Handle(p, c.authed(c.deleteBackupKeys)).Methods(http.MethodDelete)
	}
}

type keyBackupVersionRequest struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   *string         `json:"version"`
}

// Validate asks for an algorithm and auth data. Both are opaque to the
// server: the spec's auth_data is an object, but Synapse keeps a string
// too (sytest sends one), so an object or a string is kept.
func (q *keyBackupVersionRequest) Validate() error {
	if q.Algorithm == "" {
		return mxhttp.MissingParam("algorithm is required")
	}
	if t := mxhttp.TrimJSONSpace(q.AuthData); len(t) == 0 || string(t) == "null" {
		return mxhttp.MissingParam("auth_data is required")
	}
	if g := gjson.ParseBytes(q.AuthData); !g.IsObject() && g.Type != gjson.String {
		return mxhttp.BadJSON("auth_data must be an object")
	}
	return nil
}

func (c *ClientAPI) createKeyBackup(r *http.Request, dev *uapi.Device) (any, error) {
	var req keyBackupVersionRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	v, err := c.users.CreateKeyBackup(r.Context(), dev.UserID, req.Algorithm, req.AuthData)
	if err != nil {
		return nil, err
	}
	return map[string]string{"version": v}, nil
}

// keyBackupInfo is GET /room_keys/version (the latest) and
// /room_keys/version/{version}.
func (c *ClientAPI) keyBackupInfo(r *http.Request, dev *uapi.Device) (any, error) {
	info, err := c.users.KeyBackupInfo(r.Context(), dev.UserID, mxhttp.Var(r, "version"))
	if err != nil {
		return nil, backupKeysError(err)
	}
	return info, nil
}

func (c *ClientAPI) updateKeyBackup(r *http.Request, dev *uapi.Device) (any, error) {
	var req keyBackupVersionRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	version := mxhttp.Var(r, "version")
	if req.Version != nil && *req.Version != version {
		return nil, mxhttp.InvalidParam("the version in the body must be the one in the path")
	}
	if err := c.users.UpdateKeyBackup(r.Context(), dev.UserID, version, req.Algorithm, req.AuthData); err != nil {
		return nil, backupKeysError(err)
	}
	return struct{}{}, nil
}

func (c *ClientAPI) deleteKeyBackup(r *http.Request, dev *uapi.Device) (any, error) {
	if err := c.users.DeleteKeyBackup(r.Context(), dev.UserID, mxhttp.Var(r, "version")); err != nil {
		return nil, backupKeysError(err)
	}
	return struct{}{}, nil
}

// backupKeyData is KeyBackupData as a client sends it; the pointers tell a
// missing field from a zero one.
type backupKeyData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func (d *backupKeyData) Validate() error {
	if d.FirstMessageIndex == nil || d.ForwardedCount == nil || d.IsVerified == nil {
		return mxhttp.MissingParam("first_message_index, forwarded_count and is_verified are required")
	}
	if *d.FirstMessageIndex < 0 || *d.ForwardedCount < 0 {
		return mxhttp.InvalidParam("first_message_index and forwarded_count must not be negative")
	}
	if t := mxhttp.TrimJSONSpace(d.SessionData); len(t) == 0 || string(t) == "null" {
		return mxhttp.MissingParam("session_data is required")
	}
	// An object, or a string as Synapse takes (auth_data above).
	if g := gjson.ParseBytes(d.SessionData); !g.IsObject() && g.Type != gjson.String {
		return mxhttp.BadJSON("session_data must be an object")
	}
	return nil
}

func (d *backupKeyData) key(roomID, sessionID string) uapi.BackupKey {
	return uapi.BackupKey{
		RoomID: roomID, SessionID: sessionID, FirstMessageIndex: *d.FirstMessageIndex,
		ForwardedCount: *d.ForwardedCount, IsVerified: *d.IsVerified, SessionData: d.SessionData,
	}
}

type roomBackupKeys struct {
	Sessions map[string]*backupKeyData `json:"sessions"`
}

func (q *roomBackupKeys) Validate() error {
	if q.Sessions == nil {
		return mxhttp.MissingParam("sessions is required")
	}
	for _, d := range q.Sessions {
		if d == nil {
			return mxhttp.BadJSON("a session's key must be an object")
		}
		if err := d.Validate(); err != nil {
			return err
		}
	}
	return nil
}

type allBackupKeys struct {
	Rooms map[string]*roomBackupKeys `json:"rooms"`
}

func (q *allBackupKeys) Validate() error {
	if q.Rooms == nil {
		return mxhttp.MissingParam("rooms is required")
	}
	for _, room := range q.Rooms {
		if room == nil {
			return mxhttp.BadJSON("a room's keys must be an object")
		}
		if err := room.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// backupVersionParam is the required ?version= of the key endpoints.
func backupVersionParam(r *http.Request) (string, error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return "", mxhttp.MissingParam("version is required")
	}
	return v, nil
}

// backupKeysError maps the userapi's refusals of the key backup calls to
// the spec's answers.
func backupKeysError(err error) error {
	if uapi.IsNotFound(err) {
		return mxhttp.NotFound("Unknown backup version")
	}
	var wrong *uapi.WrongBackupVersionError
	if errors.As(err, &wrong) {
		return mxhttp.New(wrong.MatrixErrCode(), "Wrong backup version").With("current_version", wrong.Current)
	}
	return err
}

func (c *ClientAPI) putBackupKeys(r *http.Request, dev *uapi.Device) (any, error) {
	version, err := backupVersionParam(r)
	if err != nil {
		return nil, err
	}
	roomID, sessionID := mxhttp.Var(r, "backupRoomId"), mxhttp.Var(r, "sessionId")
	var keys []uapi.BackupKey
	switch {
	case sessionID != "":
		var d backupKeyData
		if err := mxhttp.ReadJSON(r, &d); err != nil {
			return nil, err
		}
		keys = append(keys, d.key(roomID, sessionID))
	case roomID != "":
		var q roomBackupKeys
		if err := mxhttp.ReadJSON(r, &q); err != nil {
			return nil, err
		}
		for sid, d := range q.Sessions {
			keys = append(keys, d.key(roomID, sid))
		}
	default:
		var q allBackupKeys
		if err := mxhttp.ReadJSON(r, &q); err != nil {
			return nil, err
		}
		for rid, room := range q.Rooms {
			for sid, d := range room.Sessions {
				keys = append(keys, d.key(rid, sid))
			}
		}
	}
	st, err := c.users.PutBackupKeys(r.Context(), dev.UserID, version, keys)
	if err != nil {
		return nil, backupKeysError(err)
	}
	return st, nil
}

func (c *ClientAPI) getBackupKeys(r *http.Request, dev *uapi.Device) (any, error) {
	version, err := backupVersionParam(r)
	if err != nil {
		return nil, err
	}
	roomID, sessionID := mxhttp.Var(r, "backupRoomId"), mxhttp.Var(r, "sessionId")
	keys, err := c.users.BackupKeys(r.Context(), dev.UserID, version, roomID, sessionID)
	if err != nil {
		return nil, backupKeysError(err)
	}
	switch {
	case sessionID != "":
		if len(keys) == 0 {
			return nil, mxhttp.NotFound("No key backed up for this session")
		}
		return keys[0], nil
	case roomID != "":
		sessions := make(map[string]uapi.BackupKey, len(keys))
		for _, k := range keys {
			sessions[k.SessionID] = k
		}
		return map[string]any{"sessions": sessions}, nil
	}
	rooms := map[string]map[string]map[string]uapi.BackupKey{}
	for _, k := range keys {
		room := rooms[k.RoomID]
		if room == nil {
			room = map[string]map[string]uapi.BackupKey{"sessions": {}}
			rooms[k.RoomID] = room
		}
		room["sessions"][k.SessionID] = k
	}
	return map[string]any{"rooms": rooms}, nil
}

func (c *ClientAPI) deleteBackupKeys(r *http.Request, dev *uapi.Device) (any, error) {
	version, err := backupVersionParam(r)
	if err != nil {
		return nil, err
	}
	st, err := c.users.DeleteBackupKeys(r.Context(), dev.UserID, version, mxhttp.Var(r, "backupRoomId"), mxhttp.Var(r, "sessionId"))
	if err != nil {
		return nil, backupKeysError(err)
	}
	return st, nil
}
