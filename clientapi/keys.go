package clientapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/tidwall/gjson"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
)

func (c *ClientAPI) keyRoutes(r *mux.Router) {
	r.Handle("/keys/upload", c.authedGuest(c.uploadKeys)).Methods(http.MethodPost)
	r.Handle("/keys/query", c.authedGuest(c.queryKeys)).Methods(http.MethodPost)
	r.Handle("/keys/claim", c.authedGuest(c.claimKeys)).Methods(http.MethodPost)
	r.Handle("/keys/device_signing/upload", c.authed(c.uploadCrossSigningKeys)).Methods(http.MethodPost)
	r.Handle("/keys/signatures/upload", c.authed(c.uploadSignatures)).Methods(http.MethodPost)
}

type uploadKeysRequest struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// maxUploadKeys bounds the one-time keys of one upload (clients upload
// about 50 at a time).
const maxUploadKeys = 1000

func (q *uploadKeysRequest) Validate() error {
	if len(q.OneTimeKeys)+len(q.FallbackKeys) > maxUploadKeys {
		return mxhttp.InvalidParam("at most %d one-time keys may be uploaded at once", maxUploadKeys)
	}
	for name, m := range map[string]map[string]json.RawMessage{"one_time_keys": q.OneTimeKeys, "fallback_keys": q.FallbackKeys} {
		for id, k := range m {
			alg, rest, ok := strings.Cut(id, ":")
			if !ok || alg == "" || rest == "" || len(id) > mxid.MaxLen {
				return mxhttp.InvalidParam("%s: key ID %q is not <algorithm>:<key id>", name, id)
			}
			if t := gjson.ParseBytes(k).Type; t != gjson.JSON && t != gjson.String {
				return mxhttp.BadJSON("%s: key %q must be an object or a string", name, id)
			}
		}
	}
	return nil
}

// uploadKeys is POST /keys/upload: the device keys must be the caller's
// device's own (spec: user_id and device_id "must match").
func (c *ClientAPI) uploadKeys(r *http.Request, dev *uapi.Device) (any, error) {
	var req uploadKeysRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	var err error
	if req.DeviceKeys, err = checkDeviceKeys(req.DeviceKeys, dev.UserID, dev.DeviceID); err != nil {
		return nil, err
	}
	counts, err := c.users.UploadKeys(r.Context(), uapi.UploadKeysRequest{
		UserID: dev.UserID, DeviceID: dev.DeviceID,
		DeviceKeys: req.DeviceKeys, OneTimeKeys: req.OneTimeKeys, FallbackKeys: req.FallbackKeys,
	})
	if err != nil {
		return nil, err
	}
	// Clients count on the algorithm they upload being listed, even at 0.
	if _, ok := counts["signed_curve25519"]; !ok {
		counts["signed_curve25519"] = 0
	}
	return map[string]any{"one_time_key_counts": counts}, nil
}

// checkDeviceKeys checks uploaded device keys, which must be of userID's
// device deviceID, and returns them compacted (nil if none were sent).
func checkDeviceKeys(raw json.RawMessage, userID, deviceID string) (json.RawMessage, error) {
	t := mxhttp.TrimJSONSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	g := gjson.ParseBytes(t)
	if !g.IsObject() {
		return nil, mxhttp.BadJSON("device_keys must be an object")
	}
	if g.Get("user_id").String() != userID || g.Get("device_id").String() != deviceID {
		return nil, mxhttp.InvalidParam("device_keys must be of the calling user and device")
	}
	if !g.Get("keys").IsObject() || !g.Get("algorithms").IsArray() {
		return nil, mxhttp.BadJSON("device_keys needs keys and algorithms")
	}
	for id, k := range g.Get("keys").Map() {
		if alg, rest, ok := strings.Cut(id, ":"); !ok || alg == "" || rest == "" {
			return nil, mxhttp.InvalidParam("device_keys: key ID %q is not <algorithm>:<device id>", id)
		}
		if k.Type != gjson.String {
			return nil, mxhttp.BadJSON("device_keys: key %q must be a string", id)
		}
	}
	if sigs := g.Get("signatures"); sigs.Exists() && !sigs.IsObject() {
		return nil, mxhttp.BadJSON("device_keys: signatures must be an object")
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, t); err != nil {
		return nil, mxhttp.BadJSON("device_keys: %v", err)
	}
	return compact.Bytes(), nil
}

type queryKeysRequest struct {
	DeviceKeys map[string][]string `json:"device_keys"`
	Timeout    int64               `json:"timeout"`
}

func (q *queryKeysRequest) Validate() error {
	if q.DeviceKeys == nil {
		return mxhttp.MissingParam("device_keys is required")
	}
	if err := uapi.CheckKeysQuery(q.DeviceKeys, func(d []string) []string { return d }); err != nil {
		return mxhttp.InvalidParam("device_keys: %v", err)
	}
	return nil
}

// queryKeys is POST /keys/query: users of other servers are asked of
// their servers (or answered from the cached device lists).
func (c *ClientAPI) queryKeys(r *http.Request, dev *uapi.Device) (any, error) {
	var req queryKeysRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	resp, err := c.users.QueryKeys(r.Context(), uapi.QueryKeysRequest{
		DeviceKeys: req.DeviceKeys, Requester: dev.UserID, Timeout: time.Duration(req.Timeout) * time.Millisecond,
	})
	if err != nil {
		return nil, err
	}
	return queryKeysResponse{resp, withFailures(resp.Failures)}, nil
}

// The client API's answers always list failures, if empty (clients and
// sytest look for the field); the federation API's never do.
type queryKeysResponse struct {
	*uapi.QueryKeysResponse
	Failures map[string]any `json:"failures"`
}

type claimKeysResponse struct {
	*uapi.ClaimKeysResponse
	Failures map[string]any `json:"failures"`
}

func withFailures(f map[string]any) map[string]any {
	if f == nil {
		return map[string]any{}
	}
	return f
}

type claimKeysRequest struct {
	OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	Timeout     int64                        `json:"timeout"`
}

func (q *claimKeysRequest) Validate() error {
	if q.OneTimeKeys == nil {
		return mxhttp.MissingParam("one_time_keys is required")
	}
	if err := uapi.CheckKeysQuery(q.OneTimeKeys, uapi.ClaimDevices); err != nil {
		return mxhttp.InvalidParam("one_time_keys: %v", err)
	}
	return nil
}

// claimKeys is POST /keys/claim.
func (c *ClientAPI) claimKeys(r *http.Request, dev *uapi.Device) (any, error) {
	var req claimKeysRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	resp, err := c.users.ClaimKeys(r.Context(), uapi.ClaimKeysRequest{
		OneTimeKeys: req.OneTimeKeys, Timeout: time.Duration(req.Timeout) * time.Millisecond,
	})
	if err != nil {
		return nil, err
	}
	return claimKeysResponse{resp, withFailures(resp.Failures)}, nil
}

type crossSigningRequest struct {
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
	UserSigningKey json.RawMessage `json:"user_signing_key"`
}

// crossSigningKeys checks the keys of a device_signing/upload: each one
// given must be an object of the caller, for its usage, with one key.
func crossSigningKeys(q *crossSigningRequest, userID string) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	for typ, k := range map[string]json.RawMessage{"master": q.MasterKey, "self_signing": q.SelfSigningKey, "user_signing": q.UserSigningKey} {
		t := mxhttp.TrimJSONSpace(k)
		if len(t) == 0 || string(t) == "null" {
			continue
		}
		g := gjson.ParseBytes(t)
		if !g.IsObject() {
			return nil, mxhttp.BadJSON("the %s key must be an object", typ)
		}
		if g.Get("user_id").String() != userID {
			return nil, mxhttp.InvalidParam("the %s key must be of the calling user", typ)
		}
		usage := false
		for _, u := range g.Get("usage").Array() {
			usage = usage || u.String() == typ
		}
		if !usage {
			return nil, mxhttp.InvalidParam("the %s key must have usage %q", typ, typ)
		}
		keys := g.Get("keys")
		if !keys.IsObject() || len(keys.Map()) != 1 {
			return nil, mxhttp.InvalidParam("the %s key must hold exactly one key", typ)
		}
		// Its one key is named by itself (spec: "ed25519:<unpadded
		// base64 public key>"): other keys are signed under that ID.
		for id, v := range keys.Map() {
			if v.Type != gjson.String || id != "ed25519:"+v.String() || !uapi.IsEd25519Key(v.String()) {
				return nil, mxhttp.InvalidParam("the %s key must be an ed25519 key named ed25519:<the key>", typ)
			}
		}
		if sigs := g.Get("signatures"); sigs.Exists() && !sigs.IsObject() {
			return nil, mxhttp.BadJSON("the %s key: signatures must be an object", typ)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, t); err != nil {
			return nil, mxhttp.BadJSON("the %s key: %v", typ, err)
		}
		out[typ] = compact.Bytes()
	}
	if len(out) == 0 {
		return nil, mxhttp.MissingParam("no cross-signing key given")
	}
	return out, nil
}

// uploadCrossSigningKeys is POST /keys/device_signing/upload, behind the
// user's password once the user has a master key (spec: user-interactive
// authentication).
func (c *ClientAPI) uploadCrossSigningKeys(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var req crossSigningRequest
	att, err := c.passwordUIA(r, dev, "upload cross-signing keys", body, &req)
	if err != nil {
		return nil, err
	}
	keys, err := crossSigningKeys(&req, dev.UserID)
	if err != nil {
		return nil, err
	}
	// The first master key needs no password (spec: UIA "except when the
	// user does not have an existing master cross-signing key").
	own, err := c.users.QueryKeys(r.Context(), uapi.QueryKeysRequest{DeviceKeys: map[string][]string{dev.UserID: {}}, LocalOnly: true})
	if err != nil {
		return nil, err
	}
	_, hasMaster := own.MasterKeys[dev.UserID]
	if _, newMaster := keys["master"]; !hasMaster && !newMaster {
		return nil, mxhttp.MissingParam("a master key is needed before the other cross-signing keys")
	}
	if hasMaster {
		if challenge, err := att.run(); challenge != nil || err != nil {
			return challenge, err
		}
	}
	if err := c.users.UploadCrossSigningKeys(r.Context(), dev.UserID, keys); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// signaturesRequest is the body of POST /keys/signatures/upload: by user
// ID, by key ID (a device ID or a cross-signing public key), a signed key.
type signaturesRequest map[string]map[string]json.RawMessage

func (q signaturesRequest) Validate() error {
	n := 0
	for userID, keys := range q {
		if err := mxhttp.CheckParam("user ID", userID, mxid.UserID); err != nil {
			return err
		}
		for keyID, obj := range keys {
			if err := mxid.Opaque(keyID, mxid.MaxLen); err != nil {
				return mxhttp.InvalidParam("key ID of %s: %v", userID, err)
			}
			if !gjson.ParseBytes(obj).IsObject() {
				return mxhttp.BadJSON("the signed key %s of %s must be an object", keyID, userID)
			}
			n++
		}
	}
	if n > maxSignedKeys {
		return mxhttp.InvalidParam("at most %d keys may be signed at once", maxSignedKeys)
	}
	return nil
}

// maxSignedKeys bounds one signature upload (each key is verified).
const maxSignedKeys = 1000

// uploadSignatures is POST /keys/signatures/upload: the caller's
// signatures of its own devices and master key, and of other users'
// master keys; each refused one is listed in failures.
func (c *ClientAPI) uploadSignatures(r *http.Request, dev *uapi.Device) (any, error) {
	var req signaturesRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	failures, err := c.users.UploadSignatures(r.Context(), dev.UserID, req)
	if err != nil {
		return nil, err
	}
	return map[string]any{"failures": failures}, nil
}
