package federationapi

import (
	"context"
	"fmt"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
)

// publicRoomsGet is GET /_matrix/federation/v1/publicRooms: this server's
// public room directory, paged as the client API pages it.
func (f *FederationAPI) publicRoomsGet(r *http.Request) (any, error) {
	req, err := rsapi.PublicRoomsQueryOf(r.URL.Query())
	if err != nil {
		return nil, err
	}
	return f.publicRooms(r.Context(), req)
}

// publicRoomsPost is POST /_matrix/federation/v1/publicRooms, with a
// filter.
func (f *FederationAPI) publicRoomsPost(r *http.Request) (any, error) {
	var req rsapi.PublicRoomsQuery
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Limit < 0 {
		return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	return f.publicRooms(r.Context(), req)
}

func (f *FederationAPI) publicRooms(ctx context.Context, req rsapi.PublicRoomsQuery) (any, error) {
	if req.IncludeAllNetworks && req.ThirdPartyInstanceID != "" {
		return nil, mxhttp.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
	}
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	return rs.PublicRooms(ctx, req)
}

// signed sends a request signed by this server to server and decodes its
// answer into out; a refusal keeps its Matrix code (wrapRemote).
func (f *FederationAPI) signed(ctx context.Context, method string, server spec.ServerName, path string, body, out any) error {
	fr := fclient.NewFederationRequest(method, f.key.ServerName, server, path)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			return fmt.Errorf("request to %s: %w", server, err)
		}
	}
	if err := fr.Sign(f.key.ServerName, f.key.KeyID, f.key.Private); err != nil {
		return fmt.Errorf("sign request to %s: %w", server, err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return fmt.Errorf("request to %s: %w", server, err)
	}
	return wrapRemote(server, f.client.DoRequestAndParseResponse(ctx, req, out))
}

// PublicRooms asks server for a page of its public room directory (POST
// /_matrix/federation/v1/publicRooms), for a client's ?server=.
func (r *Remote) PublicRooms(ctx context.Context, server spec.ServerName, q rsapi.PublicRoomsQuery) (*rsapi.PublicRoomsPage, error) {
	var page rsapi.PublicRoomsPage
	if err := r.f.signed(ctx, http.MethodPost, server, "/_matrix/federation/v1/publicRooms", q, &page); err != nil {
		return nil, err
	}
	if page.Chunk == nil {
		page.Chunk = []rsapi.PublicRoom{}
	}
	return &page, nil
}
