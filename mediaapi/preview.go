package mediaapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
	"golang.org/x/net/html/charset"

	"myelin/internal/mxhttp"
	"myelin/internal/netguard"
	"myelin/mediaapi/storage"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// URL previews (spec "GET /_matrix/client/v1/media/preview_url"): the
// server fetches a page a user names, which is how a homeserver gets made
// to reach its own network (SSRF). Every connection of a preview goes
// through a net.Dialer whose Control checks the address about to be
// dialled, after DNS resolution: loopback, private, link-local and other
// non-public addresses and the configured blacklist are refused, each
// redirect's connection included, and a name that resolves to such an
// address (DNS rebinding) is refused the same way.

const (
	// maxPreviewRedirects bounds the redirects one fetch follows.
	maxPreviewRedirects = 5
	// maxPreviewURL bounds the URL asked for (it is a cache key).
	maxPreviewURL = 2048
	// maxOGTags and maxOGValue bound what a page puts in a preview.
	maxOGTags  = 50
	maxOGValue = 2000
	// previewWorkers bounds the previews fetched at once.
	previewWorkers = 4
)

// previewer fetches pages and images for previews.
type previewer struct {
	cfg    config.URLPreview
	client *http.Client
	slots  chan struct{}
}

var errTooManyRedirects = errors.New("too many redirects")

func newPreviewer(cfg config.URLPreview, roots *x509.CertPool) (*previewer, error) {
	guard, err := netguard.New(cfg.IPRangeBlacklist, cfg.IPRangeWhitelist)
	if err != nil {
		return nil, fmt.Errorf("media_api.url_preview: %w", err)
	}
	d := guard.Dialer(net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second})
	tr := &http.Transport{
		// No proxy from the environment: a proxy would connect for us,
		// past the guard.
		Proxy:                 nil,
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &previewer{
		cfg: cfg,
		client: &http.Client{
			Transport: tr,
			// Each hop's address is checked when it is dialled; here its
			// scheme, and how many there were.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= maxPreviewRedirects {
					return errTooManyRedirects
				}
				return checkPreviewURL(req.URL)
			},
		},
		slots: make(chan struct{}, previewWorkers),
	}, nil
}

// checkPreviewURL refuses what is not an absolute http(s) URL of a host.
func checkPreviewURL(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return mxhttp.InvalidParam("url must be an http or https URL")
	}
	if u.Hostname() == "" {
		return mxhttp.InvalidParam("url has no host")
	}
	return nil
}

// get fetches u; the caller closes the body.
func (p *previewer) get(ctx context.Context, u *url.URL, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, mxhttp.InvalidParam("url: %v", err)
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", "Myelin URL preview")
	res, err := p.client.Do(req)
	if err != nil {
		return nil, previewFetchError(u, err)
	}
	return res, nil
}

// previewFetchError says why a fetch failed: 403 for an address the guard
// refused, 504 for a timeout, 502 for the rest (the page's fault).
func previewFetchError(u *url.URL, err error) error {
	var me *mxhttp.Error
	switch {
	case errors.As(err, &me):
		return me
	case errors.Is(err, netguard.ErrRefused):
		e := mxhttp.Forbidden("URL previews may not fetch from the address of %s", u.Hostname())
		e.Cause = err
		return e
	case errors.Is(err, context.DeadlineExceeded):
		e := mxhttp.Unknown("Timed out fetching the URL").WithStatus(http.StatusGatewayTimeout)
		e.Cause = err
		return e
	}
	e := mxhttp.Unknown("Cannot fetch the URL").WithStatus(http.StatusBadGateway)
	e.Cause = err
	return e
}

// previewURL is GET /preview_url (client v1 and the legacy media paths).
func (m *MediaAPI) previewURL(r *http.Request, _ *uapi.Device) (any, error) {
	if m.preview == nil {
		// Previews off: as Synapse answers then.
		return nil, mxhttp.Unrecognized(http.StatusNotFound)
	}
	q := r.URL.Query()
	raw := q.Get("url")
	if raw == "" {
		return nil, mxhttp.MissingParam("url is required")
	}
	if len(raw) > maxPreviewURL {
		return nil, mxhttp.InvalidParam("url is longer than %d bytes", maxPreviewURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, mxhttp.InvalidParam("url is not a URL")
	}
	if err := checkPreviewURL(u); err != nil {
		return nil, err
	}
	u.Fragment, u.RawFragment = "", ""
	now := m.now().UnixMilli()
	ts := now
	if s := q.Get("ts"); s != "" {
		if ts, err = strconv.ParseInt(s, 10, 64); err != nil || ts < 0 {
			return nil, mxhttp.InvalidParam("ts must be a timestamp in milliseconds")
		}
		// The spec lets the server answer a newer preview than asked;
		// never one of the future.
		ts = min(ts, now)
	}
	cache := m.preview.cfg.CacheDuration.Milliseconds()
	key, bucket := u.String(), ts/cache
	ctx := r.Context()
	if p, err := m.store.Preview(ctx, key, bucket, now-cache); err == nil {
		return json.RawMessage(p), nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	var made json.RawMessage
	err = m.flights.do(ctx, fmt.Sprintf("preview %d %s", bucket, key), func() error {
		// One fetch serves every waiter: it outlives the first one's
		// request, within its own bound (the page, then its image).
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*m.preview.cfg.Timeout+time.Second)
		defer cancel()
		select {
		case m.preview.slots <- struct{}{}:
		case <-fctx.Done():
			return mxhttp.ServiceUnavailable(fmt.Errorf("no preview worker free: %w", fctx.Err()))
		}
		defer func() { <-m.preview.slots }()
		og, err := m.makePreview(fctx, u)
		if err != nil {
			return err
		}
		if made, err = json.Marshal(og); err != nil {
			return fmt.Errorf("encode preview: %w", err)
		}
		return m.store.StorePreview(fctx, key, bucket, string(made), m.now().UnixMilli())
	})
	if err != nil {
		return nil, err
	}
	if made != nil {
		return made, nil
	}
	// Another request's fetch made it.
	p, err := m.store.Preview(ctx, key, bucket, now-cache)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(p), nil
}

// makePreview fetches u: an HTML page gives its OpenGraph metadata, its
// og:image fetched and stored as media here; an image is stored and
// described; anything else has no preview ({}).
func (m *MediaAPI) makePreview(ctx context.Context, u *url.URL) (map[string]any, error) {
	pctx, cancel := context.WithTimeout(ctx, m.preview.cfg.Timeout)
	defer cancel()
	res, err := m.preview.get(pctx, u, "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return nil, mxhttp.Unknown("The URL answered %d", res.StatusCode).WithStatus(http.StatusBadGateway)
	}
	final := res.Request.URL // after redirects
	ct := res.Header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	switch {
	case mt == "text/html" || mt == "application/xhtml+xml":
		// A page longer than the limit is cut off: its metadata is at
		// the top, in its head.
		body, err := charset.NewReader(io.LimitReader(res.Body, m.preview.cfg.MaxPageBytes), ct)
		if err != nil {
			return nil, mxhttp.Unknown("Cannot read the page's charset").WithStatus(http.StatusBadGateway)
		}
		og := parseOpenGraph(body)
		m.previewImage(ctx, og, final)
		return og, nil
	case strings.HasPrefix(mt, "image/"):
		og := map[string]any{}
		if err := m.storePreviewImage(ctx, og, res.Body, mt, final); err != nil {
			return nil, err
		}
		return og, nil
	}
	return map[string]any{}, nil
}

// previewImage replaces the page's og:image by the image fetched (through
// the same guard) and stored here, or drops it when it cannot be had.
func (m *MediaAPI) previewImage(ctx context.Context, og map[string]any, page *url.URL) {
	src, _ := og["og:image"].(string)
	delete(og, "og:image")
	if src == "" {
		return
	}
	iu, err := page.Parse(src)
	if err != nil || checkPreviewURL(iu) != nil {
		return
	}
	ictx, cancel := context.WithTimeout(ctx, m.preview.cfg.Timeout)
	defer cancel()
	res, err := m.preview.get(ictx, iu, "image/*")
	if err != nil {
		m.log.WithError(err).WithField("url", iu.Redacted()).Debug("preview image not fetched")
		return
	}
	defer res.Body.Close()
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if res.StatusCode < 200 || res.StatusCode > 299 || !strings.HasPrefix(mt, "image/") {
		return
	}
	if err := m.storePreviewImage(ictx, og, res.Body, mt, res.Request.URL); err != nil {
		m.log.WithError(err).WithField("url", iu.Redacted()).Debug("preview image not stored")
	}
}

// storePreviewImage stores an image of a preview as local media (so it is
// served and thumbnailed as any upload) and describes it in og: its mxc
// URI, type, size and, when it can be read from its header, dimensions.
func (m *MediaAPI) storePreviewImage(ctx context.Context, og map[string]any, body io.Reader, mt string, from *url.URL) error {
	rc, err := m.blobs.receive(body, m.preview.cfg.MaxPageBytes)
	if errors.Is(err, errTooLarge) {
		return mxhttp.New("M_TOO_LARGE", "The image is too large to preview").WithStatus(http.StatusBadGateway)
	}
	if err != nil {
		return previewFetchError(from, err)
	}
	name := path.Base(from.Path)
	if name == "/" || name == "." || len(name) > 255 || !utf8.ValidString(name) {
		name = ""
	}
	md := &storage.Media{
		ServerName: m.serverName, MediaID: newMediaID(), ContentType: mt, UploadName: name,
		Size: rc.size, Hash: rc.hash, CreatedTS: m.now().UnixMilli(),
	}
	if err := m.store1(ctx, rc, func() error { return m.store.InsertMedia(ctx, md) }); err != nil {
		return err
	}
	og["og:image"] = "mxc://" + m.serverName + "/" + md.MediaID
	og["og:image:type"] = mt
	og["matrix:image:size"] = md.Size
	delete(og, "og:image:width")
	delete(og, "og:image:height")
	if d, ok := decoders[mt]; ok {
		if f, err := m.blobs.open(md.Hash); err == nil {
			if cfg, err := d.config(f); err == nil {
				og["og:image:width"], og["og:image:height"] = cfg.Width, cfg.Height
			}
			f.Close()
		}
	}
	return nil
}

// parseOpenGraph reads a page's OpenGraph properties (<meta property="og:…"
// content="…">, the first of each), falling back on <title> for og:title
// and <meta name="description"> for og:description.
func parseOpenGraph(r io.Reader) map[string]any {
	og := map[string]any{}
	var title, description string
	z := html.NewTokenizer(r)
	inTitle := false
	for {
		switch z.Next() {
		case html.ErrorToken:
			// The end, or the cut-off: what was read stands.
			if _, ok := og["og:title"]; !ok && title != "" {
				og["og:title"] = title
			}
			if _, ok := og["og:description"]; !ok && description != "" {
				og["og:description"] = description
			}
			return og
		case html.StartTagToken, html.SelfClosingTagToken:
			tok := z.Token()
			switch tok.DataAtom {
			case atom.Title:
				inTitle = title == ""
			case atom.Meta:
				var prop, name, content string
				hasContent := false
				for _, a := range tok.Attr {
					switch strings.ToLower(a.Key) {
					case "property":
						prop = strings.ToLower(a.Val)
					case "name":
						name = strings.ToLower(a.Val)
					case "content":
						content, hasContent = cleanText(a.Val), true
					}
				}
				if prop == "" && strings.HasPrefix(name, "og:") {
					prop = name // some pages use name= for og: too
				}
				if !hasContent {
					continue
				}
				if strings.HasPrefix(prop, "og:") && len(prop) <= 64 && len(og) < maxOGTags {
					if _, ok := og[prop]; !ok {
						og[prop] = content
					}
				}
				if name == "description" && description == "" {
					description = content
				}
			}
		case html.TextToken:
			if inTitle {
				title = cleanText(string(z.Text()))
				inTitle = false
			}
		case html.EndTagToken:
			inTitle = false
		}
	}
}

// cleanText collapses white space and bounds the length of a value taken
// from a page, and makes it valid UTF-8.
func cleanText(s string) string {
	s = strings.Join(strings.Fields(strings.ToValidUTF8(s, "")), " ")
	if len(s) > maxOGValue {
		s = s[:maxOGValue]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}
