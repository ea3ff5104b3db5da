// Package mediaapi is the content repository: uploads (direct and
// asynchronous), downloads (authenticated, and the legacy unauthenticated
// ones for media from before the freeze), thumbnails, remote media fetched
// over federation and cached, and the admin API over media. Content is
// stored on disk by hash (blobStore), metadata in its own tables
// (storage). Only setup imports this package.
package mediaapi

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	"myelin/internal/mxhttp"
	"myelin/internal/ratelimit"
	"myelin/internal/sqldb"
	"myelin/mediaapi/storage"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// Devices resolves access tokens: the slice of the userapi the mediaapi
// needs.
type Devices interface {
	DeviceByToken(ctx context.Context, token string) (*uapi.Device, error)
}

// Options is what New needs beyond the database.
type Options struct {
	Config     config.MediaAPI
	ServerName string
	Devices    Devices
	// Bus carries the roomserver's output, whose media references the
	// room-wide quarantine needs; nil records none (tests of media alone).
	Bus *bus.Bus
	// UploadLimit limits each user's uploads; nil allows all.
	UploadLimit *ratelimit.Limiter
	// TLSRoots verify the pages URL previews fetch over HTTPS; nil: the
	// system's.
	TLSRoots *x509.CertPool
	Log      *logrus.Entry
}

// MediaAPI is the media component.
type MediaAPI struct {
	cfg        config.MediaAPI
	serverName string
	store      *storage.Storage
	blobs      *blobStore
	devices    Devices
	limit      *ratelimit.Limiter
	log        *logrus.Entry
	now        func() time.Time
	// freeze is when unauthenticated access froze; zero: never.
	freeze time.Time
	sizes  []config.ThumbnailSize
	// thumbSlots bounds the thumbnails decoded at once (one a core): a
	// burst of large images cannot take every core or much memory.
	thumbSlots chan struct{}
	flights    flightGroup
	remote     Remote
	bus        *bus.Bus
	// preview fetches URL previews; nil when they are off.
	preview *previewer

	// uploaded wakes the downloads waiting on an ID made by /create.
	mu       sync.Mutex
	uploaded map[string]chan struct{}

	wg sync.WaitGroup
}

// New opens the mediaapi's storage and its content directory.
func New(ctx context.Context, db *sqldb.DB, opts Options) (*MediaAPI, error) {
	store, err := storage.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("mediaapi storage: %w", err)
	}
	blobs, err := newBlobStore(opts.Config.BasePath)
	if err != nil {
		return nil, err
	}
	m := &MediaAPI{
		cfg:        opts.Config,
		serverName: opts.ServerName,
		store:      store,
		blobs:      blobs,
		devices:    opts.Devices,
		bus:        opts.Bus,
		limit:      opts.UploadLimit,
		log:        opts.Log,
		now:        time.Now,
		thumbSlots: make(chan struct{}, thumbnailWorkers()),
		uploaded:   map[string]chan struct{}{},
	}
	if d := opts.Config.LegacyFreezeDate; d != "" {
		if m.freeze, err = time.Parse(time.DateOnly, d); err != nil {
			return nil, fmt.Errorf("media_api.legacy_freeze_date: %w", err)
		}
	}
	if opts.Config.URLPreview.Enabled {
		if m.preview, err = newPreviewer(opts.Config.URLPreview, opts.TLSRoots); err != nil {
			return nil, err
		}
	}
	for _, s := range opts.Config.ThumbnailSizes {
		ts, err := config.ParseThumbnailSize(s)
		if err != nil {
			return nil, fmt.Errorf("media_api.thumbnail_sizes: %w", err)
		}
		m.sizes = append(m.sizes, ts)
	}
	return m, nil
}

// Start runs the expiry of unused media IDs and old URL previews, and
// the recording of the media rooms' events refer to, until ctx ends.
func (m *MediaAPI) Start(ctx context.Context) error {
	if m.bus != nil {
		if err := m.startRoomMedia(ctx); err != nil {
			return err
		}
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				if m.preview != nil {
					m.preview.client.CloseIdleConnections()
				}
				return
			case <-t.C:
				if err := m.store.DeleteExpiredPending(ctx, m.now().UnixMilli()); err != nil && ctx.Err() == nil {
					m.log.WithError(err).Warn("cannot expire unused media IDs")
				}
				if m.preview != nil {
					if err := m.store.DeletePreviewsBefore(ctx, m.now().Add(-m.cfg.URLPreview.CacheDuration).UnixMilli()); err != nil && ctx.Err() == nil {
						m.log.WithError(err).Warn("cannot forget old URL previews")
					}
				}
			}
		}
	}()
	return nil
}

// Wait waits for what Start started, once its context ended.
func (m *MediaAPI) Wait() { m.wg.Wait() }

// legacyPrefixes are the unauthenticated /_matrix/media versions, all
// alike (r0 and v1 are older names of v3 that clients and sytest use).
var legacyPrefixes = []string{"/_matrix/media/v3", "/_matrix/media/r0", "/_matrix/media/v1"}

// IsMediaPath reports whether path is one the media router serves: the
// client listener sends these to it, with the upload size as body limit.
func IsMediaPath(path string) bool {
	return strings.HasPrefix(path, "/_matrix/media/") || strings.HasPrefix(path, "/_matrix/client/v1/media/")
}

// Routes registers the Client-Server media endpoints.
func (m *MediaAPI) Routes(root *mux.Router) {
	get, post, put := http.MethodGet, http.MethodPost, http.MethodPut
	root.Handle("/_matrix/media/v1/create", m.authed(m.create, false)).Methods(post)
	for _, p := range legacyPrefixes {
		root.Handle(p+"/upload", m.authed(m.upload, false)).Methods(post)
		root.Handle(p+"/upload/{serverName}/{mediaId}", m.authed(m.uploadTo, false)).Methods(put)
		root.Handle(p+"/download/{serverName}/{mediaId}", mxhttp.Handler(m.legacyDownload)).Methods(get)
		root.Handle(p+"/download/{serverName}/{mediaId}/{fileName}", mxhttp.Handler(m.legacyDownload)).Methods(get)
		root.Handle(p+"/thumbnail/{serverName}/{mediaId}", mxhttp.Handler(m.legacyThumbnail)).Methods(get)
		root.Handle(p+"/config", m.authed(m.config, true)).Methods(get)
		root.Handle(p+"/preview_url", m.authed(m.previewURL, true)).Methods(get)
	}
	c := "/_matrix/client/v1/media"
	root.Handle(c+"/download/{serverName}/{mediaId}", m.authed(m.download, true)).Methods(get)
	root.Handle(c+"/download/{serverName}/{mediaId}/{fileName}", m.authed(m.download, true)).Methods(get)
	root.Handle(c+"/thumbnail/{serverName}/{mediaId}", m.authed(m.thumbnail, true)).Methods(get)
	root.Handle(c+"/config", m.authed(m.config, true)).Methods(get)
	root.Handle(c+"/preview_url", m.authed(m.previewURL, true)).Methods(get)
}

// authed wraps a handler that needs an access token; guests may read
// (download, thumbnails, config) but not upload, as in Synapse.
func (m *MediaAPI) authed(h func(r *http.Request, dev *uapi.Device) (any, error), guests bool) mxhttp.Handler {
	return mxhttp.Authenticated(func(ctx context.Context, token string) (*uapi.Device, error) {
		dev, err := m.devices.DeviceByToken(ctx, token)
		if err != nil {
			return nil, err
		}
		if dev.IsGuest && !guests {
			return nil, mxhttp.New("M_GUEST_ACCESS_FORBIDDEN", "Guests may not upload media").WithStatus(http.StatusForbidden)
		}
		return dev, nil
	}, h)
}

// config is GET /config.
func (m *MediaAPI) config(*http.Request, *uapi.Device) (any, error) {
	return map[string]any{"m.upload.size": m.cfg.MaxUploadBytes}, nil
}

// mediaIDChars is what the spec allows in a media ID ("Matrix Content
// (mxc://) URIs": [A-Za-z0-9_-]); the IDs made here are 24 of them.
func validMediaID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func checkMediaID(id string) error {
	if !validMediaID(id) {
		return mxhttp.InvalidParam("mediaId must be made of A-Z, a-z, 0-9, '_' and '-'")
	}
	return nil
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func newMediaID() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b[:])
}

// uploadMeta reads what an upload says of its content: its type (spec:
// application/octet-stream when none is given) and file name.
func uploadMeta(r *http.Request) (contentType, fileName string, err error) {
	contentType = r.Header.Get("Content-Type")
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	if len(contentType) > 255 {
		return "", "", mxhttp.InvalidParam("Content-Type is longer than 255 bytes")
	}
	if _, _, err := mime.ParseMediaType(contentType); err != nil {
		return "", "", mxhttp.InvalidParam("Content-Type is not a media type")
	}
	fileName = r.URL.Query().Get("filename")
	if len(fileName) > 255 {
		return "", "", mxhttp.InvalidParam("filename is longer than 255 bytes")
	}
	return contentType, fileName, nil
}

// receive checks the rate limit and quota and streams the request body
// into a temporary file.
func (m *MediaAPI) receive(r *http.Request, dev *uapi.Device) (*received, error) {
	if ok, wait := m.limit.Allow(dev.UserID); !ok {
		return nil, mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	max := m.cfg.MaxUploadBytes
	if r.ContentLength > max {
		return nil, mxhttp.New("M_TOO_LARGE", "Cannot upload files larger than %d bytes", max)
	}
	if err := m.checkQuota(r.Context(), dev.UserID, max64(r.ContentLength, 0)); err != nil {
		return nil, err
	}
	if r.Body == nil {
		r.Body = http.NoBody
	}
	rc, err := m.blobs.receive(r.Body, max)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.Is(err, errTooLarge) || errors.As(err, &mbe) {
			return nil, mxhttp.New("M_TOO_LARGE", "Cannot upload files larger than %d bytes", max)
		}
		if r.Context().Err() != nil {
			return nil, r.Context().Err()
		}
		return nil, fmt.Errorf("receive upload: %w", err)
	}
	if err := m.checkQuota(r.Context(), dev.UserID, rc.size); err != nil {
		m.blobs.discard(rc)
		return nil, err
	}
	return rc, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// checkQuota refuses an upload of size bytes that would take userID over
// its quota: 403 M_FORBIDDEN, as the spec lists "the user has reached a
// quota for uploaded content".
func (m *MediaAPI) checkQuota(ctx context.Context, userID string, size int64) error {
	if m.cfg.UserQuotaBytes <= 0 {
		return nil
	}
	used, err := m.store.UserUsage(ctx, userID)
	if err != nil {
		return err
	}
	if used+size > m.cfg.UserQuotaBytes {
		return mxhttp.Forbidden("Media quota exceeded: %d of %d bytes used", used, m.cfg.UserQuotaBytes)
	}
	return nil
}

// upload is POST /upload.
func (m *MediaAPI) upload(r *http.Request, dev *uapi.Device) (any, error) {
	contentType, fileName, err := uploadMeta(r)
	if err != nil {
		return nil, err
	}
	rc, err := m.receive(r, dev)
	if err != nil {
		return nil, err
	}
	md := &storage.Media{
		ServerName: m.serverName, MediaID: newMediaID(), UserID: dev.UserID,
		ContentType: contentType, UploadName: fileName, Size: rc.size, Hash: rc.hash,
		CreatedTS: m.now().UnixMilli(),
	}
	if err := m.store1(r.Context(), rc, func() error { return m.store.InsertMedia(r.Context(), md) }); err != nil {
		return nil, err
	}
	return map[string]string{"content_uri": "mxc://" + m.serverName + "/" + md.MediaID}, nil
}

// store1 places received content and records its row under the hash's
// lock, so that a deletion of other media with the same content cannot
// remove the file between the two.
func (m *MediaAPI) store1(ctx context.Context, rc *received, record func() error) error {
	unlock := m.blobs.lock(rc.hash)
	defer unlock()
	if err := m.blobs.place(rc); err != nil {
		return err
	}
	if err := record(); err != nil {
		m.dropIfUnused(ctx, rc.hash)
		return err
	}
	return nil
}

// dropIfUnused removes the file of hash if no row names it. The caller
// holds the hash's lock.
func (m *MediaAPI) dropIfUnused(ctx context.Context, hash string) {
	used, err := m.store.HashInUse(ctx, hash)
	if err == nil && !used {
		err = m.blobs.remove(hash)
	}
	if err != nil {
		m.log.WithError(err).WithField("hash", hash).Warn("cannot remove unused media content")
	}
}

// create is POST /_matrix/media/v1/create: an ID whose content comes
// later (PUT /upload/{serverName}/{mediaId}).
func (m *MediaAPI) create(r *http.Request, dev *uapi.Device) (any, error) {
	if ok, wait := m.limit.Allow(dev.UserID); !ok {
		return nil, mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	now := m.now()
	n, err := m.store.PendingCount(r.Context(), dev.UserID, now.UnixMilli())
	if err != nil {
		return nil, err
	}
	if n >= m.cfg.MaxPendingUploads {
		// The spec's answer to too many pending uploads.
		return nil, mxhttp.LimitExceeded(m.cfg.UnusedExpiry.Milliseconds())
	}
	expires := now.Add(m.cfg.UnusedExpiry).UnixMilli()
	md := &storage.Media{ServerName: m.serverName, MediaID: newMediaID(), UserID: dev.UserID, CreatedTS: now.UnixMilli(), PendingUntil: expires}
	if err := m.store.InsertMedia(r.Context(), md); err != nil {
		return nil, err
	}
	return map[string]any{"content_uri": "mxc://" + m.serverName + "/" + md.MediaID, "unused_expires_at": expires}, nil
}

// uploadTo is PUT /upload/{serverName}/{mediaId}.
func (m *MediaAPI) uploadTo(r *http.Request, dev *uapi.Device) (any, error) {
	server, id := mxhttp.Var(r, "serverName"), mxhttp.Var(r, "mediaId")
	if err := checkMediaID(id); err != nil {
		return nil, err
	}
	if server != m.serverName {
		return nil, mxhttp.NotFound("Unknown media ID")
	}
	// Refuse what can be refused before reading the body.
	md, err := m.store.Media(r.Context(), server, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, mxhttp.NotFound("Unknown media ID")
	case err != nil:
		return nil, err
	case !md.Pending():
		return nil, mxhttp.New("M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
	case md.UserID != dev.UserID:
		return nil, mxhttp.Forbidden("This media ID was created by another user")
	case md.PendingUntil <= m.now().UnixMilli():
		return nil, mxhttp.NotFound("Media ID expired")
	}
	contentType, fileName, err := uploadMeta(r)
	if err != nil {
		return nil, err
	}
	rc, err := m.receive(r, dev)
	if err != nil {
		return nil, err
	}
	md = &storage.Media{ServerName: server, MediaID: id, UserID: dev.UserID, ContentType: contentType, UploadName: fileName, Size: rc.size, Hash: rc.hash}
	var state storage.UploadState
	err = m.store1(r.Context(), rc, func() error {
		var err error
		if state, err = m.store.CompletePending(r.Context(), md, m.now().UnixMilli()); err == nil && state != storage.UploadOK {
			err = errNotRecorded
		}
		return err
	})
	switch {
	case state == storage.UploadDone:
		return nil, mxhttp.New("M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
	case state == storage.UploadNotOwner:
		return nil, mxhttp.Forbidden("This media ID was created by another user")
	case state == storage.UploadUnknown:
		return nil, mxhttp.NotFound("Unknown media ID")
	case err != nil:
		return nil, err
	}
	m.wake(server, id)
	return struct{}{}, nil
}

var errNotRecorded = errors.New("upload not recorded")

func mediaKey(server, id string) string { return server + "/" + id }

// waitUploaded returns a channel closed when the content of an ID made by
// /create arrives here.
func (m *MediaAPI) waitUploaded(server, id string) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := mediaKey(server, id)
	ch, ok := m.uploaded[k]
	if !ok {
		ch = make(chan struct{})
		m.uploaded[k] = ch
	}
	return ch
}

func (m *MediaAPI) wake(server, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := mediaKey(server, id)
	if ch, ok := m.uploaded[k]; ok {
		close(ch)
		delete(m.uploaded, k)
	}
}

// forget drops the waiting channel of an ID nobody waits on any more.
func (m *MediaAPI) forget(server, id string, ch <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := mediaKey(server, id)
	if cur, ok := m.uploaded[k]; ok && cur == ch {
		delete(m.uploaded, k)
	}
}

// timeoutParam reads timeout_ms (spec default 20 s), capped at 2 min.
func timeoutParam(r *http.Request) (time.Duration, error) {
	s := r.URL.Query().Get("timeout_ms")
	if s == "" {
		return 20 * time.Second, nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms < 0 {
		return 0, mxhttp.InvalidParam("timeout_ms must be a non-negative integer")
	}
	return min(time.Duration(ms)*time.Millisecond, 2*time.Minute), nil
}
