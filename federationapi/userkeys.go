package federationapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
)

// UserKeys is what the federation API reads and writes of the userapi's
// end-to-end encryption keys.
type UserKeys interface {
	UserDevices(ctx context.Context, userID string) (*uapi.UserDevices, error)
	QueryKeys(ctx context.Context, req uapi.QueryKeysRequest) (*uapi.QueryKeysResponse, error)
	ClaimKeys(ctx context.Context, req uapi.ClaimKeysRequest) (*uapi.ClaimKeysResponse, error)
	DeviceListUpdate(ctx context.Context, origin string, update uapi.DeviceListUpdate) error
	SigningKeyUpdate(ctx context.Context, origin string, update uapi.SigningKeyUpdate) error
}

func (f *FederationAPI) userKeyRoutes(v1 *mux.Router) {
	v1.Handle("/user/devices/{userId}", f.authed(f.userDevices)).Methods(http.MethodGet)
	v1.Handle("/user/keys/query", f.authed(f.userKeysQuery)).Methods(http.MethodPost)
	v1.Handle("/user/keys/claim", f.authed(f.userKeysClaim)).Methods(http.MethodPost)
}

// userDevices is GET /_matrix/federation/v1/user/devices/{userId}: a local
// user's devices with their keys and the stream_id of the latest change.
func (f *FederationAPI) userDevices(r *http.Request) (any, error) {
	userID := mxhttp.Var(r, "userId")
	if srv, _ := mxid.Server(userID); srv != string(f.key.ServerName) {
		return nil, mxhttp.InvalidParam("user_id is not a user of this server")
	}
	return f.userKeys.UserDevices(r.Context(), userID)
}

type userKeysQueryRequest struct {
	DeviceKeys map[string][]string `json:"device_keys"`
}

func (q *userKeysQueryRequest) Validate() error {
	if q.DeviceKeys == nil {
		return mxhttp.MissingParam("device_keys is required")
	}
	if err := uapi.CheckKeysQuery(q.DeviceKeys, func(d []string) []string { return d }); err != nil {
		return mxhttp.InvalidParam("device_keys: %v", err)
	}
	return nil
}

// userKeysQuery is POST /_matrix/federation/v1/user/keys/query: the keys
// of local users' devices; users of other servers are left out (a server
// answers for its own users only).
func (f *FederationAPI) userKeysQuery(r *http.Request) (any, error) {
	var req userKeysQueryRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	resp, err := f.userKeys.QueryKeys(r.Context(), uapi.QueryKeysRequest{DeviceKeys: req.DeviceKeys, LocalOnly: true})
	if err != nil {
		return nil, err
	}
	resp.Failures = nil
	return resp, nil
}

type userKeysClaimRequest struct {
	OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
}

func (q *userKeysClaimRequest) Validate() error {
	if q.OneTimeKeys == nil {
		return mxhttp.MissingParam("one_time_keys is required")
	}
	if err := uapi.CheckKeysQuery(q.OneTimeKeys, uapi.ClaimDevices); err != nil {
		return mxhttp.InvalidParam("one_time_keys: %v", err)
	}
	return nil
}

// userKeysClaim is POST /_matrix/federation/v1/user/keys/claim: one key of
// each local device named.
func (f *FederationAPI) userKeysClaim(r *http.Request) (any, error) {
	var req userKeysClaimRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	resp, err := f.userKeys.ClaimKeys(r.Context(), uapi.ClaimKeysRequest{OneTimeKeys: req.OneTimeKeys, LocalOnly: true})
	if err != nil {
		return nil, err
	}
	resp.Failures = nil
	return resp, nil
}

// RemoteKeys is the userapi's way to other servers' keys.
func (f *FederationAPI) RemoteKeys() uapi.RemoteKeys { return remoteKeys{f} }

type remoteKeys struct{ f *FederationAPI }

// request sends a signed request to server and decodes its answer into
// out. The typed calls of gomatrixserverlib's client decode device keys
// into structs that drop what they do not know; keys are signed, so they
// are passed on as they came.
func (k remoteKeys) request(ctx context.Context, server, method, path string, body, out any) error {
	fr := fclient.NewFederationRequest(method, k.f.key.ServerName, spec.ServerName(server), path)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			return fmt.Errorf("encode %s request: %w", path, err)
		}
	}
	if err := fr.Sign(k.f.key.ServerName, k.f.key.KeyID, k.f.key.Private); err != nil {
		return fmt.Errorf("sign %s request: %w", path, err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return fmt.Errorf("%s request: %w", path, err)
	}
	return wrapRemote(spec.ServerName(server), k.f.client.DoRequestAndParseResponse(ctx, req.WithContext(ctx), out))
}

func (k remoteKeys) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (*uapi.QueryKeysResponse, error) {
	var out uapi.QueryKeysResponse
	err := k.request(ctx, server, http.MethodPost, "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": deviceKeys}, &out)
	return &out, err
}

func (k remoteKeys) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (*uapi.ClaimKeysResponse, error) {
	var out uapi.ClaimKeysResponse
	err := k.request(ctx, server, http.MethodPost, "/_matrix/federation/v1/user/keys/claim",
		map[string]any{"one_time_keys": oneTimeKeys}, &out)
	return &out, err
}

func (k remoteKeys) UserDevices(ctx context.Context, server, userID string) (*uapi.UserDevices, error) {
	var out uapi.UserDevices
	err := k.request(ctx, server, http.MethodGet, "/_matrix/federation/v1/user/devices/"+url.PathEscape(userID), nil, &out)
	return &out, err
}
