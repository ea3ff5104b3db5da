package mediaapi_test

import (
	"bytes"
	"fmt"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// site is a web site on loopback for previews: it serves a few pages and
// an image, and counts the requests it gets by path.
type site struct {
	srv  *httptest.Server
	png  []byte
	mu   sync.Mutex
	hits map[string]int
}

func (s *site) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

func (s *site) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.hits {
		n += c
	}
	return n
}

// startSite serves on addr ("127.0.0.1:0"); redirectTo is where
// /redirect sends.
func startSite(t *testing.T, addr string, redirectTo func() string) *site {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &site{png: encode(t, "png", testImage(279, 129)), hits: map[string]int{}}
	page := `<html prefix="og: http://ogp.me/ns#"><head>
<title>The Rock (1996)</title>
<meta property="og:title" content="The Rock" />
<meta property="og:type" content="video.movie" />
<meta property="og:url" content="http://www.imdb.com/title/tt0117500/" />
<meta property="og:description" content="  A   film.  " />
<meta property="og:site_name" content="IMDb" />
<meta property="og:image" content="img/rock.png" />
<meta property="og:image:width" content="9999" />
</head><body><p>text</p></body></html>`
	mux := http.NewServeMux()
	mux.HandleFunc("/page.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, page)
	})
	mux.HandleFunc("/img/rock.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(s.png)
	})
	mux.HandleFunc("/plain.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=iso-8859-1")
		// "Café" and "Été" in Latin-1; no OpenGraph at all.
		w.Write([]byte("<html><head><title>Caf\xe9\n  menu</title><meta name=\"description\" content=\"\xc9t\xe9\"></head></html>"))
	})
	mux.HandleFunc("/big.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<html><head><meta property="og:title" content="Big">`)
		fmt.Fprint(w, "<!--"+strings.Repeat("x", 200<<10)+"-->")
		fmt.Fprint(w, `<meta property="og:description" content="past the limit"></head></html>`)
	})
	mux.HandleFunc("/text.txt", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "just text")
	})
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, redirectTo(), http.StatusFound)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/loop", http.StatusFound)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		// Never answers: the preview's time limit ends it.
		<-r.Context().Done()
	})
	s.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[r.URL.Path]++
		s.mu.Unlock()
		mux.ServeHTTP(w, r)
	})}}
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	return s
}

func previewServer(t *testing.T, dbURL string, allow ...string) *testserver.Server {
	return startServer(t, dbURL, func(c *config.Config) {
		c.MediaAPI.URLPreview.Enabled = true
		c.MediaAPI.URLPreview.IPRangeWhitelist = allow
		c.MediaAPI.URLPreview.MaxPageBytes = 64 << 10
		c.MediaAPI.URLPreview.Timeout = time.Second
	})
}

func previewPath(u string) string {
	return "/_matrix/client/v1/media/preview_url?url=" + url.QueryEscape(u)
}

// TestPreviewGuard: without an allow list nothing on loopback is fetched,
// by address or by a name resolving to it: refused with 403 before any
// request reaches the site.
func TestPreviewGuard(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := previewServer(t, dbURL)
		site := startSite(t, "127.0.0.1:0", func() string { return "/page.html" })
		_, port, _ := net.SplitHostPort(site.srv.Listener.Addr().String())
		alice := register(t, s, "pg-alice")
		for _, u := range []string{
			"http://127.0.0.1:" + port + "/page.html",
			"http://localhost:" + port + "/page.html",
			"http://[::1]:" + port + "/page.html",
			"http://[::ffff:127.0.0.1]:" + port + "/page.html",
			"http://0.0.0.0:" + port + "/page.html",
			"https://127.0.0.1:" + port + "/page.html",
			"http://127.0.0.1:" + port + "/redirect",
		} {
			t.Run(u, func(t *testing.T) {
				r := alice.do(t, "GET", previewPath(u), nil, nil)
				if r.status != 403 || r.errcode() != "M_FORBIDDEN" {
					t.Errorf("%d %s, want 403 M_FORBIDDEN", r.status, r.body)
				}
			})
		}
		if n := site.total(); n != 0 {
			t.Errorf("the site got %d requests", n)
		}
	})
}

// TestPreview runs a server allowed to reach 127.0.0.1 (alone): pages and
// images are previewed, a redirect to another loopback address is
// refused, and limits hold.
func TestPreview(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := previewServer(t, dbURL, "127.0.0.1/32")
		// A second site on 127.0.0.2, which the allow list leaves out.
		other := startSite(t, "127.0.0.2:0", func() string { return "/page.html" })
		site := startSite(t, "127.0.0.1:0", func() string { return "http://" + other.srv.Listener.Addr().String() + "/page.html" })
		base := "http://" + site.srv.Listener.Addr().String()
		alice := register(t, s, "pv-alice")

		r := alice.do(t, "GET", previewPath(base+"/page.html"), nil, nil)
		if r.status != 200 {
			t.Fatalf("preview: %d %s", r.status, r.body)
		}
		og := r.json(t)
		for k, want := range map[string]any{
			"og:title": "The Rock", "og:type": "video.movie", "og:url": "http://www.imdb.com/title/tt0117500/",
			"og:description": "A film.", "og:site_name": "IMDb", "og:image:type": "image/png",
			"og:image:width": float64(279), "og:image:height": float64(129), "matrix:image:size": float64(len(site.png)),
		} {
			if og[k] != want {
				t.Errorf("%s = %#v, want %#v", k, og[k], want)
			}
		}
		mxc, _ := og["og:image"].(string)
		if !strings.HasPrefix(mxc, "mxc://localhost/") {
			t.Fatalf("og:image %q", og["og:image"])
		}
		id := strings.TrimPrefix(mxc, "mxc://")
		// The image is media here: downloaded as fetched, thumbnailed.
		if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+id, nil, nil); r.status != 200 || !bytes.Equal(r.body, site.png) {
			t.Errorf("image download: %d, %d bytes", r.status, len(r.body))
		}
		r = alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+id+"?width=32&height=32&method=crop", nil, nil)
		if r.status != 200 {
			t.Fatalf("image thumbnail: %d %s", r.status, r.body)
		}
		if img, err := png.Decode(bytes.NewReader(r.body)); err != nil || img.Bounds().Dx() != 32 || img.Bounds().Dy() != 32 {
			t.Errorf("thumbnail: %v %v", err, img)
		}
		// Cached: asked again (in the same time bucket), nothing fetched.
		pageHits, imgHits := site.count("/page.html"), site.count("/img/rock.png")
		ts := time.Now().UnixMilli()
		if r := alice.do(t, "GET", previewPath(base+"/page.html")+fmt.Sprintf("&ts=%d", ts), nil, nil); r.status != 200 || r.json(t)["og:image"] != mxc {
			t.Errorf("cached: %d %s", r.status, r.body)
		}
		if site.count("/page.html") != pageHits || site.count("/img/rock.png") != imgHits || pageHits != 1 || imgHits != 1 {
			t.Errorf("fetched %d and %d times, want once each", site.count("/page.html"), site.count("/img/rock.png"))
		}

		for _, tc := range []struct {
			name, path string
			status     int
			errcode    string
			want       map[string]any
			absent     []string
		}{
			{"fallbacks and charset", "/plain.html", 200, "", map[string]any{"og:title": "Café menu", "og:description": "Été"}, []string{"og:image"}},
			{"cut off at the size limit", "/big.html", 200, "", map[string]any{"og:title": "Big"}, []string{"og:description"}},
			{"an image", "/img/rock.png", 200, "", map[string]any{"og:image:type": "image/png", "og:image:width": float64(279), "matrix:image:size": float64(len(site.png))}, nil},
			{"not HTML", "/text.txt", 200, "", map[string]any{}, []string{"og:title"}},
			{"not found", "/missing", 502, "M_UNKNOWN", nil, nil},
			{"redirect loop", "/loop", 502, "M_UNKNOWN", nil, nil},
			{"time limit", "/slow", 504, "M_UNKNOWN", nil, nil},
			{"redirect to a refused address", "/redirect", 403, "M_FORBIDDEN", nil, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := alice.do(t, "GET", previewPath(base+tc.path), nil, nil)
				if r.status != tc.status || (tc.errcode != "" && r.errcode() != tc.errcode) {
					t.Fatalf("%d %s, want %d %s", r.status, r.body, tc.status, tc.errcode)
				}
				if tc.status != 200 {
					return
				}
				got := r.json(t)
				for k, v := range tc.want {
					if got[k] != v {
						t.Errorf("%s = %#v, want %#v", k, got[k], v)
					}
				}
				for _, k := range tc.absent {
					if _, ok := got[k]; ok {
						t.Errorf("%s present: %v", k, got[k])
					}
				}
			})
		}
		if n := other.total(); n != 0 {
			t.Errorf("the refused address got %d requests", n)
		}
		// Bad requests.
		anon := &client{base: s.URL}
		for _, tc := range []struct {
			name, query, errcode string
			status               int
			c                    *client
		}{
			{"no url", "", "M_MISSING_PARAM", 400, alice},
			{"not http", "?url=" + url.QueryEscape("file:///etc/passwd"), "M_INVALID_PARAM", 400, alice},
			{"no host", "?url=" + url.QueryEscape("http:///x"), "M_INVALID_PARAM", 400, alice},
			{"bad ts", "?url=" + url.QueryEscape(base+"/page.html") + "&ts=yesterday", "M_INVALID_PARAM", 400, alice},
			{"too long", "?url=" + url.QueryEscape(base+"/"+strings.Repeat("a", 3000)), "M_INVALID_PARAM", 400, alice},
			{"no token", "?url=" + url.QueryEscape(base+"/page.html"), "M_MISSING_TOKEN", 401, anon},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, p := range []string{"/_matrix/client/v1/media/preview_url", "/_matrix/media/v3/preview_url"} {
					r := tc.c.do(t, "GET", p+tc.query, nil, nil)
					if r.status != tc.status || r.errcode() != tc.errcode {
						t.Errorf("%s: %d %s, want %d %s", p, r.status, r.body, tc.status, tc.errcode)
					}
				}
			})
		}
	})
}
