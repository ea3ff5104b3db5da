package mediaapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/mediaapi/storage"
)

// Remote fetches media from the server that holds it.
type Remote interface {
	// Download returns the content of serverName's mediaID, its type and
	// file name; storage.ErrNotFound when the server says it has none.
	Download(ctx context.Context, serverName, mediaID string) (body io.ReadCloser, contentType, fileName string, err error)
}

// SetRemote lets the mediaapi fetch remote media through r (set by setup).
func (m *MediaAPI) SetRemote(r Remote) { m.remote = r }

// remoteFetchTimeout bounds one fetch of a remote item, body included.
const remoteFetchTimeout = 5 * time.Minute

// fetchRemote fetches a remote item not cached here, once however many
// ask at the same time, and caches it.
func (m *MediaAPI) fetchRemote(ctx context.Context, server, id string) (*storage.Media, error) {
	if m.remote == nil {
		return nil, storage.ErrNotFound
	}
	err := m.flights.do(ctx, "remote "+mediaKey(server, id), func() error {
		// The fetch serves every waiter: it outlives the first one's
		// request, within its own bound.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), remoteFetchTimeout)
		defer cancel()
		return m.fetchRemoteOnce(fctx, server, id)
	})
	if err != nil {
		return nil, err
	}
	return m.store.Media(ctx, server, id)
}

func (m *MediaAPI) fetchRemoteOnce(ctx context.Context, server, id string) error {
	if _, err := m.store.Media(ctx, server, id); err == nil {
		return nil // another caller's fetch finished first
	}
	body, contentType, fileName, err := m.remote.Download(ctx, server, id)
	if errors.Is(err, storage.ErrNotFound) {
		return err
	}
	if err != nil {
		e := mxhttp.Unknown("Cannot fetch the media from %s", server).WithStatus(http.StatusBadGateway)
		e.Cause = err
		return e
	}
	defer body.Close()
	rc, err := m.blobs.receive(body, m.cfg.MaxUploadBytes)
	if errors.Is(err, errTooLarge) {
		// The spec's answer for remote content too large to serve.
		return mxhttp.New("M_TOO_LARGE", "Remote content is too large").WithStatus(http.StatusBadGateway)
	}
	if err != nil {
		e := mxhttp.Unknown("Cannot fetch the media from %s", server).WithStatus(http.StatusBadGateway)
		e.Cause = err
		return e
	}
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	md := &storage.Media{
		ServerName: server, MediaID: id, ContentType: contentType, UploadName: fileName,
		Size: rc.size, Hash: rc.hash, CreatedTS: m.now().UnixMilli(),
	}
	return m.store1(ctx, rc, func() error {
		err := m.store.InsertMedia(ctx, md)
		if errors.Is(err, storage.ErrExists) {
			return nil
		}
		return err
	})
}

// FederationRemote fetches media over federation: the authenticated
// /_matrix/federation/v1/media/download (spec v1.11), falling back to the
// legacy /_matrix/media/v3/download with allow_remote=false for servers
// that do not know it.
type FederationRemote struct {
	// Origin is this server's name, which signs the requests.
	Origin spec.ServerName
	// Signed sends signed requests (DownloadMedia); Plain the legacy
	// requests and redirects. Both go through the federation transport
	// (its address guard and the operator's server policy).
	Signed fclient.FederationClient
	Plain  *fclient.Client
}

// Download implements Remote.
func (f *FederationRemote) Download(ctx context.Context, server, id string) (io.ReadCloser, string, string, error) {
	res, err := f.Signed.DownloadMedia(ctx, f.Origin, spec.ServerName(server), id)
	if err != nil {
		return nil, "", "", fmt.Errorf("media download from %s: %w", server, err)
	}
	switch {
	case res.StatusCode == http.StatusOK:
		return f.readMultipart(ctx, res)
	case res.StatusCode == http.StatusNotFound && errcodeOf(res) == "M_NOT_FOUND":
		return nil, "", "", storage.ErrNotFound
	case res.StatusCode == http.StatusNotFound, res.StatusCode == http.StatusBadRequest,
		res.StatusCode == http.StatusMethodNotAllowed, res.StatusCode == http.StatusNotImplemented:
		// An endpoint the server does not know (M_UNRECOGNIZED): an older
		// server, asked the legacy way.
		res.Body.Close()
		return f.legacy(ctx, server, id)
	default:
		res.Body.Close()
		return nil, "", "", fmt.Errorf("media download from %s: status %d", server, res.StatusCode)
	}
}

// errcodeOf reads the errcode of an error response, and closes its body
// only when it is read to the end (the caller closes it).
func errcodeOf(res *http.Response) string {
	var b struct {
		Errcode string `json:"errcode"`
	}
	_ = json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&b)
	return b.Errcode
}

// readMultipart takes the content out of a multipart/mixed answer (spec:
// the first part JSON metadata, the second the content or a Location to
// fetch it from).
func (f *FederationRemote) readMultipart(ctx context.Context, res *http.Response) (io.ReadCloser, string, string, error) {
	mt, params, err := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		res.Body.Close()
		return nil, "", "", fmt.Errorf("media download: Content-Type %q is not multipart/mixed", res.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(res.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		res.Body.Close()
		return nil, "", "", fmt.Errorf("media download: metadata part: %w", err)
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(meta, 64<<10)); err != nil {
		res.Body.Close()
		return nil, "", "", fmt.Errorf("media download: metadata part: %w", err)
	}
	part, err := mr.NextPart()
	if err != nil {
		res.Body.Close()
		return nil, "", "", fmt.Errorf("media download: content part: %w", err)
	}
	if loc := part.Header.Get("Location"); loc != "" {
		res.Body.Close()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
		if err != nil {
			return nil, "", "", fmt.Errorf("media download: Location %q: %w", loc, err)
		}
		r2, err := f.Plain.DoHTTPRequest(ctx, req)
		if err != nil {
			return nil, "", "", fmt.Errorf("media download from %s: %w", loc, err)
		}
		if r2.StatusCode != http.StatusOK {
			r2.Body.Close()
			return nil, "", "", fmt.Errorf("media download from %s: status %d", loc, r2.StatusCode)
		}
		return r2.Body, r2.Header.Get("Content-Type"), fileNameOf(r2.Header.Get("Content-Disposition")), nil
	}
	return struct {
		io.Reader
		io.Closer
	}{part, res.Body}, part.Header.Get("Content-Type"), fileNameOf(part.Header.Get("Content-Disposition")), nil
}

// legacy fetches through /_matrix/media/v3/download?allow_remote=false.
func (f *FederationRemote) legacy(ctx context.Context, server, id string) (io.ReadCloser, string, string, error) {
	res, err := f.Plain.CreateMediaDownloadRequest(ctx, spec.ServerName(server), id)
	if err != nil {
		return nil, "", "", fmt.Errorf("legacy media download from %s: %w", server, err)
	}
	switch res.StatusCode {
	case http.StatusOK:
		return res.Body, res.Header.Get("Content-Type"), fileNameOf(res.Header.Get("Content-Disposition")), nil
	case http.StatusNotFound:
		res.Body.Close()
		return nil, "", "", storage.ErrNotFound
	default:
		res.Body.Close()
		return nil, "", "", fmt.Errorf("legacy media download from %s: status %d", server, res.StatusCode)
	}
}

// fileNameOf reads the file name of a Content-Disposition (filename* or
// filename), "" when there is none.
func fileNameOf(disposition string) string {
	_, params, err := mime.ParseMediaType(disposition)
	if err != nil {
		return ""
	}
	name := params["filename"]
	if len(name) > 255 {
		return ""
	}
	return name
}
