package setup_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"image"
	"image/png"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"

	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// mediaGet downloads path from a client listener with token.
func mediaGet(t *testing.T, base, token, path string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, b
}

func mediaUpload(t *testing.T, c *testserver.Client, content []byte, contentType string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", c.Base+"/_matrix/media/v3/upload?filename=f.bin", bytes.NewReader(content))
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", contentType)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("upload: %d %s", res.StatusCode, b)
	}
	_, after, _ := strings.Cut(string(b), `"mxc://`)
	id, _, _ := strings.Cut(after, `"`)
	return id
}

// TestFederatedMedia: a user of hs1 downloads and thumbnails media
// uploaded on hs2, which hs1 fetches over federation (the authenticated
// multipart endpoint) and caches; an older server that knows only the
// legacy download is asked that way; another server's unauthenticated
// request is refused.
func TestFederatedMedia(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hs1 := fed.start(t, "hs1.test", "127.0.0.2", dbURL)
		hs2 := fed.start(t, "hs2.test", "127.0.0.3", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hs2.Register(t, "alice")
		bob := hs1.Register(t, "bob")

		content := make([]byte, 200<<10)
		_, _ = rand.Read(content)
		id := mediaUpload(t, alice, content, "application/octet-stream")
		for _, tc := range []struct{ name, path string }{
			{"first fetch", "/_matrix/client/v1/media/download/" + id},
			{"cached", "/_matrix/client/v1/media/download/" + id},
			{"legacy endpoint", "/_matrix/media/v3/download/" + id},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, h, body := mediaGet(t, hs1.URL, bob.Token, tc.path)
				if status != 200 || !bytes.Equal(body, content) {
					t.Fatalf("%d, %d bytes: %s", status, len(body), body[:min(len(body), 200)])
				}
				if h.Get("Content-Disposition") != `attachment; filename="f.bin"` {
					t.Errorf("Content-Disposition %q", h.Get("Content-Disposition"))
				}
			})
		}
		t.Run("thumbnail of remote media", func(t *testing.T) {
			img := image.NewRGBA(image.Rect(0, 0, 640, 480))
			for i := range img.Pix {
				img.Pix[i] = uint8(i)
			}
			var buf bytes.Buffer
			_ = png.Encode(&buf, img)
			pid := mediaUpload(t, alice, buf.Bytes(), "image/png")
			status, _, body := mediaGet(t, hs1.URL, bob.Token, "/_matrix/client/v1/media/thumbnail/"+pid+"?width=96&height=96&method=crop")
			if status != 200 {
				t.Fatalf("%d %s", status, body)
			}
			th, err := png.Decode(bytes.NewReader(body))
			if err != nil || th.Bounds().Dx() != 96 || th.Bounds().Dy() != 96 {
				t.Fatalf("thumbnail: %v %v", th.Bounds(), err)
			}
		})
		t.Run("unknown remote media", func(t *testing.T) {
			if status, _, body := mediaGet(t, hs1.URL, bob.Token, "/_matrix/client/v1/media/download/hs2.test/nosuchmedia"); status != 404 {
				t.Errorf("%d %s", status, body)
			}
			// allow_remote=false never asks.
			if status, _, _ := mediaGet(t, hs1.URL, bob.Token, "/_matrix/client/v1/media/download/hs2.test/other?allow_remote=false"); status != 404 {
				t.Errorf("allow_remote=false: %d", status)
			}
		})
		t.Run("federation endpoint", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := hs1.FederationClient().DownloadMedia(ctx, "hs1.test", "hs2.test", strings.TrimPrefix(id, "hs2.test/"))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			mt, params, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
			if res.StatusCode != 200 || mt != "multipart/mixed" {
				t.Fatalf("%d %s", res.StatusCode, res.Header.Get("Content-Type"))
			}
			mr := multipart.NewReader(res.Body, params["boundary"])
			meta, _ := mr.NextPart()
			if b, _ := io.ReadAll(meta); string(b) != "{}" || meta.Header.Get("Content-Type") != "application/json" {
				t.Errorf("metadata part %q", b)
			}
			part, err := mr.NextPart()
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := io.ReadAll(part); !bytes.Equal(b, content) {
				t.Errorf("content part: %d bytes", len(b))
			}
			// Unsigned: refused.
			hc := fed.httpClient("hs2.test")
			r2, err := hc.Get(hs2.FederationURL() + "/_matrix/federation/v1/media/download/" + strings.TrimPrefix(id, "hs2.test/"))
			if err != nil {
				t.Fatal(err)
			}
			r2.Body.Close()
			if r2.StatusCode != 401 {
				t.Errorf("unsigned: %d", r2.StatusCode)
			}
		})
		t.Run("federation thumbnail", func(t *testing.T) {
			img := image.NewRGBA(image.Rect(0, 0, 300, 200))
			var buf bytes.Buffer
			_ = png.Encode(&buf, img)
			pid := strings.TrimPrefix(mediaUpload(t, alice, buf.Bytes(), "image/png"), "hs2.test/")
			key1, err := signing.LoadOrGenerate(hs1.Config.Keys.SigningKeyPath, "hs1.test")
			if err != nil {
				t.Fatal(err)
			}
			uri := "/_matrix/federation/v1/media/thumbnail/" + pid + "?width=32&height=32&method=crop"
			fr := fclient.NewFederationRequest("GET", "hs1.test", "hs2.test", uri)
			if err := fr.Sign("hs1.test", key1.KeyID, key1.Private); err != nil {
				t.Fatal(err)
			}
			req, err := fr.HTTPRequest()
			if err != nil {
				t.Fatal(err)
			}
			req.URL, _ = url.Parse(hs2.FederationURL() + uri)
			res, err := fed.httpClient("hs2.test").Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			mt, params, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
			if res.StatusCode != 200 || mt != "multipart/mixed" {
				t.Fatalf("%d %s", res.StatusCode, res.Header.Get("Content-Type"))
			}
			mr := multipart.NewReader(res.Body, params["boundary"])
			if _, err := mr.NextPart(); err != nil {
				t.Fatal(err)
			}
			part, err := mr.NextPart()
			if err != nil {
				t.Fatal(err)
			}
			th, err := png.Decode(part)
			if err != nil || th.Bounds().Dx() != 32 || th.Bounds().Dy() != 32 {
				t.Fatalf("thumbnail part: %v %v", th, err)
			}
		})
		t.Run("legacy fallback", func(t *testing.T) {
			var fedAsked, legacyAsked atomic.Int32
			old := startOldMediaServer(t, fed, "old.test", "127.0.0.4", func(w http.ResponseWriter, r *http.Request) {
				switch {
				case strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/"):
					fedAsked.Add(1)
					w.WriteHeader(404)
					_, _ = io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
				case r.URL.Path == "/_matrix/media/v3/download/old.test/oldmedia" && r.URL.Query().Get("allow_remote") == "false":
					legacyAsked.Add(1)
					w.Header().Set("Content-Type", "text/plain")
					w.Header().Set("Content-Disposition", `inline; filename="old.txt"`)
					_, _ = io.WriteString(w, "from an older server")
				default:
					w.WriteHeader(404)
					_, _ = io.WriteString(w, `{"errcode":"M_NOT_FOUND","error":"no"}`)
				}
			})
			defer old.Close()
			status, h, body := mediaGet(t, hs1.URL, bob.Token, "/_matrix/client/v1/media/download/old.test/oldmedia")
			if status != 200 || string(body) != "from an older server" || h.Get("Content-Disposition") != `inline; filename="old.txt"` {
				t.Fatalf("%d %q %q", status, body, h.Get("Content-Disposition"))
			}
			if fedAsked.Load() != 1 || legacyAsked.Load() != 1 {
				t.Errorf("asked %d times over federation, %d the legacy way", fedAsked.Load(), legacyAsked.Load())
			}
		})
	})
}

// startOldMediaServer serves h over TLS at ip as server name, published in
// fed's DNS: a server that is not a Myelin.
func startOldMediaServer(t *testing.T, fed *fedNet, name, ip string, h http.HandlerFunc) *http.Server {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	cert := fed.ca.TLS(name)
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	fed.mu.Lock()
	fed.hosts[name] = netip.MustParseAddr(ip)
	fed.srv["_matrix-fed._tcp."+name] = []*net.SRV{{Target: name + ".", Port: uint16(p)}}
	fed.mu.Unlock()
	return srv
}
