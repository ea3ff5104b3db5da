package mediaapi

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/mediaapi/storage"
	uapi "myelin/userapi/api"
)

// download is GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}].
func (m *MediaAPI) download(r *http.Request, _ *uapi.Device) (any, error) {
	return m.serveDownload(r, false)
}

// legacyDownload is the unauthenticated GET /_matrix/media/v3/download:
// only media from before the freeze (spec v1.11, "Content repository").
func (m *MediaAPI) legacyDownload(r *http.Request) (any, error) {
	return m.serveDownload(r, true)
}

func (m *MediaAPI) serveDownload(r *http.Request, legacy bool) (any, error) {
	md, err := m.lookup(r, mxhttp.Var(r, "serverName"), legacy, r.URL.Query().Get("allow_remote") != "false")
	if err != nil {
		return nil, err
	}
	name := md.UploadName
	if n := mxhttp.Var(r, "fileName"); n != "" {
		name = n
	}
	return m.serveBlob(blobOf(md, name)), nil
}

// blob is stored content as it is served.
type blob struct {
	hash, contentType, name string
	createdTS               int64
}

func blobOf(md *storage.Media, name string) blob {
	return blob{md.Hash, md.ContentType, name, md.CreatedTS}
}

// lookup finds the media a download or thumbnail names: local (waiting
// for the content of an ID made by /create, up to timeout_ms), or remote
// (cached, else fetched from its server when allow_remote is not false).
func (m *MediaAPI) lookup(r *http.Request, server string, legacy, allowRemote bool) (*storage.Media, error) {
	ctx := r.Context()
	id := mxhttp.Var(r, "mediaId")
	if err := checkMediaID(id); err != nil {
		return nil, err
	}
	timeout, err := timeoutParam(r)
	if err != nil {
		return nil, err
	}
	md, err := m.store.Media(ctx, server, id)
	if errors.Is(err, storage.ErrNotFound) && server != m.serverName {
		if !allowRemote {
			return nil, mxhttp.NotFound("Media not found")
		}
		if !reachableName(server) {
			return nil, mxhttp.InvalidParam("serverName is not the name of a server")
		}
		md, err = m.fetchRemote(ctx, server, id)
	}
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxhttp.NotFound("Media not found")
	}
	if err != nil {
		return nil, err
	}
	if md.Pending() {
		if md, err = m.waitForContent(ctx, md, timeout); err != nil {
			return nil, err
		}
	}
	if md.QuarantinedBy != "" {
		return nil, mxhttp.NotFound("Media not found")
	}
	if legacy && !m.freeze.IsZero() && md.CreatedTS >= m.freeze.UnixMilli() {
		// Spec v1.11: media from after the freeze is served only to
		// authenticated requests; the legacy endpoints say it is not
		// there, which tells clients to use the new ones.
		return nil, mxhttp.NotFound("Media not found (unauthenticated media access is frozen: use /_matrix/client/v1/media)")
	}
	return md, nil
}

// reachableName reports whether a server name the grammar admits (".."
// is a dns-name to it) could name a host: an IP literal, or DNS labels
// that are not empty.
func reachableName(server string) bool {
	host, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server))
	if !ok {
		return false
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return true
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" {
			return false
		}
	}
	return true
}

// waitForContent waits up to timeout for the content of an ID made by
// /create, then answers 504 M_NOT_YET_UPLOADED (spec) if it has not come.
func (m *MediaAPI) waitForContent(ctx context.Context, md *storage.Media, timeout time.Duration) (*storage.Media, error) {
	notYet := mxhttp.New("M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
	if md.PendingUntil <= m.now().UnixMilli() {
		return nil, mxhttp.NotFound("Media not found")
	}
	ch := m.waitUploaded(md.ServerName, md.MediaID)
	defer m.forget(md.ServerName, md.MediaID, ch)
	// The upload may have completed between the read and the wait.
	cur, err := m.store.Media(ctx, md.ServerName, md.MediaID)
	if err != nil {
		return nil, err
	}
	if !cur.Pending() {
		return cur, nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		return nil, notYet
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	cur, err = m.store.Media(ctx, md.ServerName, md.MediaID)
	if err != nil {
		return nil, err
	}
	if cur.Pending() {
		return nil, notYet
	}
	return cur, nil
}

// inlineTypes are the content types served inline (Synapse's list): they
// cannot run script in the browser that shows them. Anything else is an
// attachment, so an uploaded HTML page or SVG never runs as this origin.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// safeHeaders are set on every media response (spec: "Serving inline
// content"): no script runs, no sniffing into another type, and other
// origins (web clients elsewhere) may embed it.
var safeHeaders = map[string][]string{
	"Content-Security-Policy":      {"sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"},
	"X-Content-Type-Options":       {"nosniff"},
	"Cross-Origin-Resource-Policy": {"cross-origin"},
	// private: an answer to an authenticated request must not be kept
	// by a shared cache for others.
	"Cache-Control": {"private, max-age=86400"},
}

// contentDisposition is inline for the safe types, attachment for the
// rest, with the file name as RFC 6266 writes it: a quoted ASCII token
// when it is one, else RFC 5987's UTF-8 percent-encoding.
func contentDisposition(contentType, name string) string {
	kind := "attachment"
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && inlineTypes[mt] {
		kind = "inline"
	}
	if name == "" {
		return kind
	}
	if plainFileName(name) {
		return kind + `; filename="` + name + `"`
	}
	return kind + "; filename*=utf-8''" + rfc5987(name)
}

// plainFileName reports whether name can be a quoted string without
// escapes: printable ASCII without quotes or backslashes.
func plainFileName(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// rfc5987 percent-encodes all but RFC 5987's attr-chars.
func rfc5987(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// serveBlob streams stored content from disk with the safe headers;
// http.ServeContent answers Range and conditional requests.
func (m *MediaAPI) serveBlob(b blob) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := m.blobs.open(b.hash)
		if err != nil {
			mxhttp.WriteError(w, r, fmt.Errorf("open media content: %w", err))
			return
		}
		defer f.Close()
		h := w.Header()
		for k, v := range safeHeaders {
			h[k] = v
		}
		contentType := b.contentType
		if contentType == "" {
			contentType = "application/octet-stream"
		}
		h.Set("Content-Type", contentType)
		h.Set("Content-Disposition", contentDisposition(contentType, b.name))
		http.ServeContent(w, r, "", time.UnixMilli(b.createdTS), f)
	})
}
