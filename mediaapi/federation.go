package mediaapi

import (
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"

	"github.com/gorilla/mux"

	"myelin/internal/mxhttp"
)

// FederationRoutes registers what other servers ask of this one's media
// on the federation listener: the authenticated endpoints (spec v1.11,
// wrapped by authed, the federationapi's X-Matrix check) and the legacy
// download and thumbnail, which older servers use, for media from before
// the freeze. Only media stored here is served: a server is never made to
// fetch for another.
func (m *MediaAPI) FederationRoutes(root *mux.Router, authed func(mxhttp.Handler) mxhttp.Handler) {
	get := http.MethodGet
	v1 := "/_matrix/federation/v1/media"
	root.Handle(v1+"/download/{mediaId}", authed(m.fedDownload)).Methods(get)
	root.Handle(v1+"/thumbnail/{mediaId}", authed(m.fedThumbnail)).Methods(get)
	for _, p := range legacyPrefixes {
		root.Handle(p+"/download/{serverName}/{mediaId}", mxhttp.Handler(m.fedLegacyDownload)).Methods(get)
		root.Handle(p+"/download/{serverName}/{mediaId}/{fileName}", mxhttp.Handler(m.fedLegacyDownload)).Methods(get)
		root.Handle(p+"/thumbnail/{serverName}/{mediaId}", mxhttp.Handler(m.fedLegacyThumbnail)).Methods(get)
	}
}

// fedDownload is GET /_matrix/federation/v1/media/download/{mediaId}.
func (m *MediaAPI) fedDownload(r *http.Request) (any, error) {
	md, err := m.lookup(r, m.serverName, false, false)
	if err != nil {
		return nil, err
	}
	return m.serveMultipart(blobOf(md, md.UploadName)), nil
}

// fedThumbnail is GET /_matrix/federation/v1/media/thumbnail/{mediaId}.
func (m *MediaAPI) fedThumbnail(r *http.Request) (any, error) {
	b, err := m.thumbnailOf(r, m.serverName, false, false)
	if err != nil {
		return nil, err
	}
	return m.serveMultipart(b), nil
}

func (m *MediaAPI) fedLegacyDownload(r *http.Request) (any, error) {
	if mxhttp.Var(r, "serverName") != m.serverName {
		return nil, mxhttp.NotFound("Media not found")
	}
	return m.serveDownload(r, true)
}

func (m *MediaAPI) fedLegacyThumbnail(r *http.Request) (any, error) {
	if mxhttp.Var(r, "serverName") != m.serverName {
		return nil, mxhttp.NotFound("Media not found")
	}
	return m.serveThumbnail(r, true)
}

// serveMultipart answers as the federation media endpoints do: a
// multipart/mixed body whose first part is the (empty) JSON metadata and
// whose second is the content, streamed from disk.
func (m *MediaAPI) serveMultipart(b blob) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := m.blobs.open(b.hash)
		if err != nil {
			mxhttp.WriteError(w, r, fmt.Errorf("open media content: %w", err))
			return
		}
		defer f.Close()
		mw := multipart.NewWriter(w)
		w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
		w.WriteHeader(http.StatusOK)
		meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
		if err == nil {
			_, err = io.WriteString(meta, "{}")
		}
		if err != nil {
			return // the other server went away
		}
		ct := b.contentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		part, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":        {ct},
			"Content-Disposition": {contentDisposition(ct, b.name)},
		})
		if err != nil {
			return
		}
		if _, err := io.Copy(part, f); err != nil {
			mxhttp.Logger(r.Context()).WithError(err).Debug("federation media download cut short")
			return
		}
		_ = mw.Close()
	})
}
