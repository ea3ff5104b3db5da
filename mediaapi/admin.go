package mediaapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"myelin/internal/mxhttp"
	"myelin/mediaapi/storage"
	uapi "myelin/userapi/api"
)

// AdminRoutes registers the media admin API, in Synapse's shape
// (/_synapse/admin/v1/...), for server admins only.
func (m *MediaAPI) AdminRoutes(root *mux.Router) {
	a := "/_synapse/admin/v1"
	root.Handle(a+"/media/{serverName}/{mediaId}", m.admin(m.adminDelete)).Methods(http.MethodDelete)
	root.Handle(a+"/media/{serverName}/delete", m.admin(m.adminDeleteBefore)).Methods(http.MethodPost)
	root.Handle(a+"/media/delete", m.admin(m.adminDeleteBefore)).Methods(http.MethodPost)
	root.Handle(a+"/users/{userId}/media", m.admin(m.adminUserMedia)).Methods(http.MethodGet)
	root.Handle(a+"/users/{userId}/media", m.admin(m.adminDeleteUserMedia)).Methods(http.MethodDelete)
	root.Handle(a+"/media/quarantine/{serverName}/{mediaId}", m.admin(m.adminQuarantine(true))).Methods(http.MethodPost)
	root.Handle(a+"/media/unquarantine/{serverName}/{mediaId}", m.admin(m.adminQuarantine(false))).Methods(http.MethodPost)
	root.Handle(a+"/room/{roomId}/media", m.admin(m.adminRoomMedia)).Methods(http.MethodGet)
	root.Handle(a+"/room/{roomId}/media/quarantine", m.admin(m.adminQuarantineRoom)).Methods(http.MethodPost)
	root.Handle(a+"/quarantine_media/{roomId}", m.admin(m.adminQuarantineRoom)).Methods(http.MethodPost)
}

func (m *MediaAPI) admin(h func(r *http.Request, dev *uapi.Device) (any, error)) mxhttp.Handler {
	return m.authed(func(r *http.Request, dev *uapi.Device) (any, error) {
		if !dev.IsAdmin {
			return nil, mxhttp.Forbidden("You are not a server admin")
		}
		return h(r, dev)
	}, false)
}

// deleteMedia deletes items of serverName and the content no other row
// names any more.
func (m *MediaAPI) deleteMedia(ctx context.Context, serverName string, ids []string) ([]string, error) {
	deleted, hashes, err := m.store.DeleteMedia(ctx, serverName, ids)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, h := range hashes {
		if seen[h] {
			continue
		}
		seen[h] = true
		unlock := m.blobs.lock(h)
		m.dropIfUnused(ctx, h)
		unlock()
	}
	if deleted == nil {
		deleted = []string{}
	}
	return deleted, nil
}

// adminDelete is DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}.
func (m *MediaAPI) adminDelete(r *http.Request, _ *uapi.Device) (any, error) {
	server, id := mxhttp.Var(r, "serverName"), mxhttp.Var(r, "mediaId")
	if err := checkMediaID(id); err != nil {
		return nil, err
	}
	deleted, err := m.deleteMedia(r.Context(), server, []string{id})
	if err != nil {
		return nil, err
	}
	if len(deleted) == 0 {
		return nil, mxhttp.NotFound("Media not found")
	}
	return map[string]any{"deleted_media": deleted, "total": len(deleted)}, nil
}

// adminDeleteBefore is POST /_synapse/admin/v1/media/{serverName}/delete
// ?before_ts=&size_gt=: this server's media older than before_ts.
func (m *MediaAPI) adminDeleteBefore(r *http.Request, _ *uapi.Device) (any, error) {
	server := mxhttp.Var(r, "serverName")
	if server == "" {
		server = m.serverName
	}
	if server != m.serverName {
		return nil, mxhttp.InvalidParam("Can only delete local media")
	}
	q := r.URL.Query()
	before, err := strconv.ParseInt(q.Get("before_ts"), 10, 64)
	if err != nil || before < 0 {
		return nil, mxhttp.MissingParam("before_ts must be a timestamp in milliseconds")
	}
	var sizeGT int64 = -1
	if s := q.Get("size_gt"); s != "" {
		if sizeGT, err = strconv.ParseInt(s, 10, 64); err != nil || sizeGT < 0 {
			return nil, mxhttp.InvalidParam("size_gt must be a non-negative integer")
		}
	}
	ids, err := m.store.MediaBefore(r.Context(), server, before, sizeGT)
	if err != nil {
		return nil, err
	}
	deleted, err := m.deleteMedia(r.Context(), server, ids)
	if err != nil {
		return nil, err
	}
	return map[string]any{"deleted_media": deleted, "total": len(deleted)}, nil
}

// adminUserMedia is GET /_synapse/admin/v1/users/{userId}/media.
func (m *MediaAPI) adminUserMedia(r *http.Request, _ *uapi.Device) (any, error) {
	q := r.URL.Query()
	from, limit := 0, 100
	var err error
	if s := q.Get("from"); s != "" {
		if from, err = strconv.Atoi(s); err != nil || from < 0 {
			return nil, mxhttp.InvalidParam("from must be a non-negative integer")
		}
	}
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
			return nil, mxhttp.InvalidParam("limit must be from 1 to 1000")
		}
	}
	media, total, err := m.store.UserMedia(r.Context(), mxhttp.Var(r, "userId"), from, limit)
	if err != nil {
		return nil, err
	}
	if media == nil {
		media = []*storage.Media{}
	}
	res := map[string]any{"media": media, "total": total}
	if from+len(media) < total {
		res["next_token"] = from + len(media)
	}
	return res, nil
}

// adminDeleteUserMedia is DELETE /_synapse/admin/v1/users/{userId}/media.
func (m *MediaAPI) adminDeleteUserMedia(r *http.Request, _ *uapi.Device) (any, error) {
	var ids []string
	for {
		media, _, err := m.store.UserMedia(r.Context(), mxhttp.Var(r, "userId"), len(ids), 1000)
		if err != nil {
			return nil, err
		}
		for _, md := range media {
			ids = append(ids, md.MediaID)
		}
		if len(media) < 1000 {
			break
		}
	}
	deleted, err := m.deleteMedia(r.Context(), m.serverName, ids)
	if err != nil {
		return nil, err
	}
	return map[string]any{"deleted_media": deleted, "total": len(deleted)}, nil
}

// adminQuarantine is POST /_synapse/admin/v1/media/(un)quarantine/...:
// quarantined media is answered as not found (and not fetched again);
// remote media may be quarantined before it is ever fetched.
func (m *MediaAPI) adminQuarantine(on bool) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		server, id := mxhttp.Var(r, "serverName"), mxhttp.Var(r, "mediaId")
		if err := checkMediaID(id); err != nil {
			return nil, err
		}
		by := ""
		if on {
			by = dev.UserID
		}
		err := m.store.Quarantine(r.Context(), server, id, by)
		if errors.Is(err, storage.ErrNotFound) && on && server != m.serverName {
			// Remote media not fetched yet: quarantined before it comes.
			_, err = m.store.QuarantineUncached(r.Context(), server, id, by, m.now().UnixMilli())
		}
		if errors.Is(err, storage.ErrNotFound) {
			return nil, mxhttp.NotFound("Media not found")
		}
		if err != nil {
			return nil, err
		}
		return struct{}{}, nil
	}
}
