package mediaapi_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/image/webp"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// client talks to a test server with raw bodies and headers.
type client struct {
	base, token string
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r *resp) errcode() string {
	var b struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(r.body, &b)
	return b.Errcode
}

func (r *resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("not JSON (%d): %s", r.status, r.body)
	}
	return m
}

func (c *client) do(t *testing.T, method, path string, body io.Reader, hdr map[string]string) *resp {
	t.Helper()
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return &resp{status: res.StatusCode, header: res.Header, body: b}
}

// upload posts content and returns the mxc URI's server/id path.
func (c *client) upload(t *testing.T, content []byte, contentType, name string) string {
	t.Helper()
	path := "/_matrix/media/v3/upload"
	if name != "" {
		path += "?filename=" + name
	}
	r := c.do(t, "POST", path, bytes.NewReader(content), map[string]string{"Content-Type": contentType})
	if r.status != 200 {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	uri, _ := r.json(t)["content_uri"].(string)
	if !strings.HasPrefix(uri, "mxc://") {
		t.Fatalf("content_uri %q", uri)
	}
	return strings.TrimPrefix(uri, "mxc://")
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func register(t *testing.T, s *testserver.Server, name string) *client {
	t.Helper()
	c := s.Register(t, name)
	return &client{base: s.URL, token: c.Token}
}

// registerAdmin makes a server admin through shared-secret registration.
func registerAdmin(t *testing.T, s *testserver.Server, name string) *client {
	t.Helper()
	c := &client{base: s.URL}
	nonce, _ := c.do(t, "GET", "/_synapse/admin/v1/register", nil, nil).json(t)["nonce"].(string)
	m := hmac.New(sha1.New, []byte(s.Config.Registration.SharedSecret))
	m.Write([]byte(nonce + "\x00" + name + "\x00pw-" + name + "\x00admin"))
	body, _ := json.Marshal(map[string]any{"nonce": nonce, "username": name, "password": "pw-" + name, "admin": true, "mac": hex.EncodeToString(m.Sum(nil))})
	r := c.do(t, "POST", "/_synapse/admin/v1/register", bytes.NewReader(body), map[string]string{"Content-Type": "application/json"})
	if r.status != 200 {
		t.Fatalf("register admin: %d %s", r.status, r.body)
	}
	c.token, _ = r.json(t)["access_token"].(string)
	return c
}

// storeFiles lists the files under the media store (temporary files
// included), relative to it.
func storeFiles(t *testing.T, base string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(base, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func startServer(t *testing.T, dbURL string, opts ...testserver.Options) *testserver.Server {
	base := []testserver.Options{func(c *config.Config) {
		c.MediaAPI.MaxUploadBytes = 512 << 10
		c.MediaAPI.UserQuotaBytes = 1 << 20
		c.MediaAPI.LegacyFreezeDate = time.Now().Add(48 * time.Hour).UTC().Format(time.DateOnly)
		c.MediaAPI.MaxThumbnailSourcePixels = 4_000_000
	}}
	return testserver.Start(t, testserver.Config(t.TempDir(), dbURL, append(base, opts...)...))
}

func TestMedia(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := startServer(t, dbURL)
		t.Run("round trip", func(t *testing.T) { testRoundTrip(t, s) })
		t.Run("headers", func(t *testing.T) { testHeaders(t, s) })
		t.Run("limits", func(t *testing.T) { testLimits(t, s) })
		t.Run("async upload", func(t *testing.T) { testAsync(t, s) })
		t.Run("thumbnails", func(t *testing.T) { testThumbnails(t, s) })
		t.Run("bad input", func(t *testing.T) { testBadInput(t, s) })
		t.Run("admin", func(t *testing.T) { testAdmin(t, s) })
	})
}

func testRoundTrip(t *testing.T, s *testserver.Server) {
	alice := register(t, s, "rt-alice")
	content := randomBytes(300 << 10)
	id := alice.upload(t, content, "application/octet-stream", "data.bin")
	anon := &client{base: s.URL}
	for _, tc := range []struct {
		name string
		c    *client
		path string
	}{
		{"authenticated", alice, "/_matrix/client/v1/media/download/" + id},
		{"authenticated with file name", alice, "/_matrix/client/v1/media/download/" + id + "/other.bin"},
		{"legacy before the freeze", anon, "/_matrix/media/v3/download/" + id},
		{"legacy r0", anon, "/_matrix/media/r0/download/" + id},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.c.do(t, "GET", tc.path, nil, nil)
			if r.status != 200 || !bytes.Equal(r.body, content) {
				t.Fatalf("%d, %d bytes, want the %d uploaded", r.status, len(r.body), len(content))
			}
		})
	}
	// The same bytes again: a new ID, the content stored once.
	before := len(storeFiles(t, s.Config.MediaAPI.BasePath))
	id2 := alice.upload(t, content, "application/octet-stream", "")
	if id2 == id {
		t.Fatal("second upload got the same ID")
	}
	if after := len(storeFiles(t, s.Config.MediaAPI.BasePath)); after != before {
		t.Errorf("the same content stored twice: %d files, then %d", before, after)
	}
	// A Range request: the middle of the content.
	r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+id, nil, map[string]string{"Range": "bytes=1000-1999"})
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, content[1000:2000]) {
		t.Errorf("range: %d, %d bytes", r.status, len(r.body))
	}
	// No token on the authenticated endpoint; an unknown ID.
	if r := anon.do(t, "GET", "/_matrix/client/v1/media/download/"+id, nil, nil); r.status != 401 || r.errcode() != "M_MISSING_TOKEN" {
		t.Errorf("no token: %d %s", r.status, r.body)
	}
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/localhost/nosuchmedia", nil, nil); r.status != 404 || r.errcode() != "M_NOT_FOUND" {
		t.Errorf("unknown: %d %s", r.status, r.body)
	}
	// Config answers the upload limit.
	r = alice.do(t, "GET", "/_matrix/client/v1/media/config", nil, nil)
	if r.status != 200 || r.json(t)["m.upload.size"] != float64(512<<10) {
		t.Errorf("config: %d %s", r.status, r.body)
	}
	// URL previews are off by default: the disabled answer.
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/preview_url?url=https://example.org", nil, nil); r.status != 404 || r.errcode() != "M_UNRECOGNIZED" {
		t.Errorf("preview_url: %d %s", r.status, r.body)
	}
}

func testHeaders(t *testing.T, s *testserver.Server) {
	alice := register(t, s, "hd-alice")
	for _, tc := range []struct {
		name, contentType, fileName, pathName string
		wantDisposition                       string
	}{
		{"image inline", "image/png", "cat.png", "", `inline; filename="cat.png"`},
		{"html attachment", "text/html", "page.html", "", `attachment; filename="page.html"`},
		{"svg attachment", "image/svg+xml", "x.svg", "", `attachment; filename="x.svg"`},
		{"text with charset inline", "text/plain; charset=utf-8", "a.txt", "", `inline; filename="a.txt"`},
		{"no name", "application/pdf", "", "", "attachment"},
		{"utf-8 name", "text/plain", "%C3%A9t%C3%A9.txt", "", "inline; filename*=utf-8''%C3%A9t%C3%A9.txt"},
		{"quote in name", "text/plain", "a%22b.txt", "", "inline; filename*=utf-8''a%22b.txt"},
		{"name in the path", "text/plain", "a.txt", "b%20c.txt", `inline; filename="b c.txt"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := alice.upload(t, []byte("<script>alert(1)</script>"), tc.contentType, tc.fileName)
			path := "/_matrix/client/v1/media/download/" + id
			if tc.pathName != "" {
				path += "/" + tc.pathName
			}
			r := alice.do(t, "GET", path, nil, nil)
			if r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
			want := map[string]string{
				"Content-Type":                 tc.contentType,
				"Content-Disposition":          tc.wantDisposition,
				"X-Content-Type-Options":       "nosniff",
				"Cross-Origin-Resource-Policy": "cross-origin",
			}
			for k, v := range want {
				if got := r.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if csp := r.header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "sandbox;") || !strings.Contains(csp, "script-src 'none'") {
				t.Errorf("Content-Security-Policy = %q", csp)
			}
		})
	}
}

func testLimits(t *testing.T, s *testserver.Server) {
	alice := register(t, s, "lim-alice")
	tmp := filepath.Join(s.Config.MediaAPI.BasePath, "tmp")
	// Over the limit with a Content-Length, and streamed without one (cut
	// off while it streams in).
	big := randomBytes(600 << 10)
	if r := alice.do(t, "POST", "/_matrix/media/v3/upload", bytes.NewReader(big), nil); r.status != 413 || r.errcode() != "M_TOO_LARGE" {
		t.Errorf("too large: %d %s", r.status, r.body)
	}
	chunked := io.MultiReader(bytes.NewReader(big)) // no length: sent chunked
	if r := alice.do(t, "POST", "/_matrix/media/v3/upload", chunked, nil); r.status != 413 || r.errcode() != "M_TOO_LARGE" {
		t.Errorf("too large, chunked: %d %s", r.status, r.body)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// The quota (1 MiB): two uploads of 400 KiB fit, the third does not.
	for i := 0; i < 2; i++ {
		alice.upload(t, randomBytes(400<<10), "application/octet-stream", "")
	}
	r := alice.do(t, "POST", "/_matrix/media/v3/upload", bytes.NewReader(randomBytes(400<<10)), nil)
	if r.status != 403 || r.errcode() != "M_FORBIDDEN" {
		t.Errorf("over quota: %d %s", r.status, r.body)
	}
	// Another user has a quota of their own.
	register(t, s, "lim-bob").upload(t, randomBytes(400<<10), "application/octet-stream", "")
}

func testAsync(t *testing.T, s *testserver.Server) {
	alice, bob := register(t, s, "as-alice"), register(t, s, "as-bob")
	r := alice.do(t, "POST", "/_matrix/media/v1/create", nil, nil)
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	body := r.json(t)
	id := strings.TrimPrefix(body["content_uri"].(string), "mxc://")
	if exp, _ := body["unused_expires_at"].(float64); int64(exp) < time.Now().Add(time.Hour).UnixMilli() {
		t.Errorf("unused_expires_at %v", body["unused_expires_at"])
	}
	// Not there yet: 504 once the client's timeout has passed.
	r = alice.do(t, "GET", "/_matrix/client/v1/media/download/"+id+"?timeout_ms=50", nil, nil)
	if r.status != 504 || r.errcode() != "M_NOT_YET_UPLOADED" {
		t.Errorf("before upload: %d %s", r.status, r.body)
	}
	// Another user cannot fill it; a download waiting for it gets it.
	if r := bob.do(t, "PUT", "/_matrix/media/v3/upload/"+id, strings.NewReader("x"), nil); r.status != 403 || r.errcode() != "M_FORBIDDEN" {
		t.Errorf("other user: %d %s", r.status, r.body)
	}
	content := randomBytes(50 << 10)
	got := make(chan *resp, 1)
	go func() { got <- bob.do(t, "GET", "/_matrix/client/v1/media/download/"+id+"?timeout_ms=20000", nil, nil) }()
	if r := alice.do(t, "PUT", "/_matrix/media/v3/upload/"+id, bytes.NewReader(content), map[string]string{"Content-Type": "image/png"}); r.status != 200 {
		t.Fatalf("put: %d %s", r.status, r.body)
	}
	if r := <-got; r.status != 200 || !bytes.Equal(r.body, content) {
		t.Errorf("waiting download: %d, %d bytes", r.status, len(r.body))
	}
	if r := alice.do(t, "PUT", "/_matrix/media/v3/upload/"+id, strings.NewReader("again"), nil); r.status != 409 || r.errcode() != "M_CANNOT_OVERWRITE_MEDIA" {
		t.Errorf("overwrite: %d %s", r.status, r.body)
	}
	if r := alice.do(t, "PUT", "/_matrix/media/v3/upload/localhost/nosuchid", strings.NewReader("x"), nil); r.status != 404 || r.errcode() != "M_NOT_FOUND" {
		t.Errorf("unknown ID: %d %s", r.status, r.body)
	}
	// At most ten pending IDs per user.
	carol := register(t, s, "as-carol")
	for i := 0; i < 10; i++ {
		if r := carol.do(t, "POST", "/_matrix/media/v1/create", nil, nil); r.status != 200 {
			t.Fatalf("create %d: %d %s", i, r.status, r.body)
		}
	}
	if r := carol.do(t, "POST", "/_matrix/media/v1/create", nil, nil); r.status != 429 || r.errcode() != "M_LIMIT_EXCEEDED" {
		t.Errorf("eleventh pending: %d %s", r.status, r.body)
	}
}

// testImage is a w x h gradient.
func testImage(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	return img
}

func encode(t *testing.T, format string, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch format {
	case "png":
		err = png.Encode(&buf, img)
	case "jpeg":
		err = jpeg.Encode(&buf, img, nil)
	case "gif":
		// Two frames: the thumbnail is of the first.
		p := image.NewPaletted(img.Bounds(), []color.Color{color.Black, color.White})
		err = gif.EncodeAll(&buf, &gif.GIF{Image: []*image.Paletted{p, p}, Delay: []int{10, 10}})
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testThumbnails(t *testing.T, s *testserver.Server) {
	alice := register(t, s, "th-alice")
	webpBytes, err := os.ReadFile("testdata/blue-purple-pink.lossy.webp")
	if err != nil {
		t.Fatal(err)
	}
	wcfg, err := webp.DecodeConfig(bytes.NewReader(webpBytes))
	if err != nil {
		t.Fatal(err)
	}
	sources := []struct {
		format, contentType string
		content             []byte
		w, h                int
	}{
		{"png", "image/png", encode(t, "png", testImage(1000, 500)), 1000, 500},
		{"jpeg", "image/jpeg", encode(t, "jpeg", testImage(1000, 500)), 1000, 500},
		{"gif", "image/gif", encode(t, "gif", testImage(1000, 500)), 1000, 500},
		{"webp", "image/webp", webpBytes, wcfg.Width, wcfg.Height},
	}
	for _, src := range sources {
		id := alice.upload(t, src.content, src.contentType, "")
		for _, tc := range []struct {
			query        string
			wantW, wantH int
		}{
			// crop fills the 32x32 (or 96x96) box; scale fits the 320x240 one.
			{"width=32&height=32&method=crop", 32, 32},
			{"width=50&height=50&method=crop", 96, 96},
			{"width=300&height=200&method=scale", scaled(src.w, src.h, 320, 240, true), scaled(src.w, src.h, 320, 240, false)},
			{"width=10000&height=10000&method=scale", scaled(src.w, src.h, 800, 600, true), scaled(src.w, src.h, 800, 600, false)},
		} {
			t.Run(src.format+" "+tc.query, func(t *testing.T) {
				for _, prefix := range []string{"/_matrix/client/v1/media/thumbnail/", "/_matrix/media/v3/thumbnail/"} {
					r := alice.do(t, "GET", prefix+id+"?"+tc.query, nil, nil)
					if r.status != 200 {
						t.Fatalf("%s: %d %s", prefix, r.status, r.body)
					}
					var img image.Image
					var err error
					switch r.header.Get("Content-Type") {
					case "image/png":
						img, err = png.Decode(bytes.NewReader(r.body))
					case "image/jpeg":
						img, err = jpeg.Decode(bytes.NewReader(r.body))
					default:
						t.Fatalf("thumbnail type %q", r.header.Get("Content-Type"))
					}
					if err != nil {
						t.Fatal(err)
					}
					b := img.Bounds()
					if abs(b.Dx()-tc.wantW) > 1 || abs(b.Dy()-tc.wantH) > 1 {
						t.Errorf("%s: %dx%d, want %dx%d", prefix, b.Dx(), b.Dy(), tc.wantW, tc.wantH)
					}
					if r.header.Get("X-Content-Type-Options") != "nosniff" {
						t.Errorf("no safe headers on a thumbnail")
					}
				}
			})
		}
	}
	// animated=true of a small GIF is the original, animation and all.
	gifContent := encode(t, "gif", testImage(200, 100))
	id := alice.upload(t, gifContent, "image/gif", "")
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+id+"?width=32&height=32&animated=true", nil, nil); r.status != 200 || !bytes.Equal(r.body, gifContent) {
		t.Errorf("animated: %d, %d bytes", r.status, len(r.body))
	}
	// Bad parameters.
	for _, q := range []string{"width=32", "width=0&height=32", "width=a&height=32", "width=32&height=32&method=stretch", "width=32&height=-4", "width=32&height=32&animated=yes"} {
		if r := alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+id+"?"+q, nil, nil); r.status != 400 {
			t.Errorf("%s: %d %s", q, r.status, r.body)
		}
	}
	// Content that is not an image.
	textID := alice.upload(t, []byte("hello"), "text/plain", "")
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+textID+"?width=32&height=32", nil, nil); r.status != 400 {
		t.Errorf("text: %d %s", r.status, r.body)
	}
}

// scaled is the width (or height) of a w x h image fitted into a bw x bh
// box, never enlarged.
func scaled(w, h, bw, bh int, width bool) int {
	f := min(float64(bw)/float64(w), float64(bh)/float64(h), 1)
	if width {
		return int(float64(w)*f + 0.5)
	}
	return int(float64(h)*f + 0.5)
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// bombPNG is a PNG whose header claims w x h pixels, with no pixel data
// worth the name.
func bombPNG(t *testing.T, w, h uint32) []byte {
	full := encode(t, "png", testImage(1, 1))
	// IHDR starts at 8 (signature) + 8 (length, type); width and height
	// are its first 8 bytes; its CRC follows the 13 bytes of data.
	b := append([]byte(nil), full...)
	put := func(off int, v uint32) {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	put(16, w)
	put(20, h)
	crc := crc32IEEE(b[12:29])
	put(29, crc)
	return b
}

func testBadInput(t *testing.T, s *testserver.Server) {
	alice := register(t, s, "bad-alice")
	pngContent := encode(t, "png", testImage(400, 300))
	for _, tc := range []struct {
		name, contentType string
		content           []byte
		wantStatus        int
		wantCode          string
	}{
		{"truncated png", "image/png", pngContent[:len(pngContent)/2], 400, "M_UNKNOWN"},
		{"decompression bomb", "image/png", bombPNG(t, 100000, 100000), 413, "M_TOO_LARGE"},
		{"text claiming png", "image/png", []byte("not an image at all"), 400, "M_UNKNOWN"},
		{"png claiming jpeg", "image/jpeg", pngContent, 400, "M_UNKNOWN"},
		{"empty", "image/png", nil, 400, "M_UNKNOWN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := alice.upload(t, tc.content, tc.contentType, "")
			r := alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+id+"?width=96&height=96&method=crop", nil, nil)
			if r.status != tc.wantStatus || r.errcode() != tc.wantCode {
				t.Errorf("%d %s, want %d %s", r.status, r.body, tc.wantStatus, tc.wantCode)
			}
			// The original is still served as it came.
			if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+id, nil, nil); r.status != 200 || !bytes.Equal(r.body, tc.content) {
				t.Errorf("download: %d", r.status)
			}
		})
	}
	outside := filepath.Dir(s.Config.MediaAPI.BasePath)
	beforeOutside, _ := os.ReadDir(outside)
	for _, tc := range []struct {
		name, method, path string
		hdr                map[string]string
		wantStatus         int
	}{
		{"bad content type", "POST", "/_matrix/media/v3/upload", map[string]string{"Content-Type": "not a type"}, 400},
		{"traversal in a media ID", "GET", "/_matrix/client/v1/media/download/localhost/..%2F..%2Fetc%2Fpasswd", nil, 400},
		{"dots as a media ID", "GET", "/_matrix/client/v1/media/download/localhost/..", nil, 400},
		{"traversal in a PUT", "PUT", "/_matrix/media/v3/upload/localhost/..%2F..%2Fx", nil, 400},
		{"traversal in a thumbnail", "GET", "/_matrix/client/v1/media/thumbnail/localhost/..%2Fx?width=1&height=1", nil, 400},
		{"bad server name", "GET", "/_matrix/client/v1/media/download/bad%20server/abc", nil, 400},
		{"dots as a server name", "GET", "/_matrix/client/v1/media/download/../abc", nil, 400},
		{"traversal in an upload name", "POST", "/_matrix/media/v3/upload?filename=..%2F..%2F..%2Fescaped", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := alice.do(t, tc.method, tc.path, strings.NewReader("content"), tc.hdr)
			if r.status != tc.wantStatus {
				t.Errorf("%d %s, want %d", r.status, r.body, tc.wantStatus)
			}
		})
	}
	// Nothing written outside the store, every file in it named by hash.
	if after, _ := os.ReadDir(outside); len(after) != len(beforeOutside) {
		t.Errorf("files beside the media store: %v, then %v", beforeOutside, after)
	}
	for _, f := range storeFiles(t, s.Config.MediaAPI.BasePath) {
		if len(filepath.Base(f)) != 64 || strings.Contains(f, "..") {
			t.Errorf("unexpected file in the media store: %s", f)
		}
	}
}

func testAdmin(t *testing.T, s *testserver.Server) {
	admin := registerAdmin(t, s, "ad-admin")
	alice := register(t, s, "ad-alice")
	content := randomBytes(10 << 10)
	ids := []string{
		alice.upload(t, content, "application/octet-stream", "a"),
		alice.upload(t, randomBytes(10<<10), "application/octet-stream", "b"),
		alice.upload(t, randomBytes(10<<10), "application/octet-stream", "c"),
	}
	// Non-admins are refused.
	if r := alice.do(t, "GET", "/_synapse/admin/v1/users/@ad-alice:localhost/media", nil, nil); r.status != 403 {
		t.Errorf("non-admin: %d %s", r.status, r.body)
	}
	r := admin.do(t, "GET", "/_synapse/admin/v1/users/@ad-alice:localhost/media?limit=2", nil, nil)
	if r.status != 200 {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	list := r.json(t)
	if list["total"] != float64(3) || len(list["media"].([]any)) != 2 || list["next_token"] != float64(2) {
		t.Errorf("list: %s", r.body)
	}
	// Quarantine hides it; unquarantine shows it again.
	if r := admin.do(t, "POST", "/_synapse/admin/v1/media/quarantine/"+ids[0], nil, nil); r.status != 200 {
		t.Fatalf("quarantine: %d %s", r.status, r.body)
	}
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+ids[0], nil, nil); r.status != 404 {
		t.Errorf("quarantined: %d", r.status)
	}
	if r := admin.do(t, "POST", "/_synapse/admin/v1/media/unquarantine/"+ids[0], nil, nil); r.status != 200 {
		t.Fatalf("unquarantine: %d %s", r.status, r.body)
	}
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+ids[0], nil, nil); r.status != 200 {
		t.Errorf("unquarantined: %d", r.status)
	}
	// Delete by ID: the content goes when no other item shares it.
	before := len(storeFiles(t, s.Config.MediaAPI.BasePath))
	if r := admin.do(t, "DELETE", "/_synapse/admin/v1/media/"+ids[0], nil, nil); r.status != 200 || r.json(t)["total"] != float64(1) {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if after := len(storeFiles(t, s.Config.MediaAPI.BasePath)); after != before-1 {
		t.Errorf("files: %d before, %d after", before, after)
	}
	if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+ids[0], nil, nil); r.status != 404 {
		t.Errorf("deleted: %d", r.status)
	}
	if r := admin.do(t, "DELETE", "/_synapse/admin/v1/media/"+ids[0], nil, nil); r.status != 404 {
		t.Errorf("deleted again: %d", r.status)
	}
	// Older than a date: nothing before the epoch, everything before now.
	r = admin.do(t, "POST", "/_synapse/admin/v1/media/localhost/delete?before_ts=1", nil, nil)
	if r.status != 200 || r.json(t)["total"] != float64(0) {
		t.Errorf("delete before 1: %d %s", r.status, r.body)
	}
	bob := register(t, s, "ad-bob")
	bobID := bob.upload(t, randomBytes(1000), "text/plain", "")
	// Delete by user.
	r = admin.do(t, "DELETE", "/_synapse/admin/v1/users/@ad-alice:localhost/media", nil, nil)
	if r.status != 200 || r.json(t)["total"] != float64(2) {
		t.Errorf("delete user media: %d %s", r.status, r.body)
	}
	r = admin.do(t, "POST", fmt.Sprintf("/_synapse/admin/v1/media/localhost/delete?before_ts=%d", time.Now().Add(time.Minute).UnixMilli()), nil, nil)
	if r.status != 200 || r.json(t)["total"].(float64) < 1 {
		t.Errorf("delete before now: %d %s", r.status, r.body)
	}
	if r := bob.do(t, "GET", "/_matrix/client/v1/media/download/"+bobID, nil, nil); r.status != 404 {
		t.Errorf("deleted by date: %d", r.status)
	}
	if r := admin.do(t, "POST", "/_synapse/admin/v1/media/localhost/delete", nil, nil); r.status != 400 {
		t.Errorf("no before_ts: %d %s", r.status, r.body)
	}
}

// TestFrozenAndLimited runs a server whose unauthenticated media froze in
// 2000 and whose uploads are rate-limited.
func TestFrozenAndLimited(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := startServer(t, dbURL, func(c *config.Config) {
			c.MediaAPI.LegacyFreezeDate = "2000-01-01"
			c.RateLimits.Enabled = true
			c.RateLimits.MediaUpload = config.Bucket{PerSecond: 0.001, Burst: 3}
		})
		alice := register(t, s, "fz-alice")
		id := alice.upload(t, []byte("after the freeze"), "text/plain", "")
		anon := &client{base: s.URL}
		for _, p := range []string{"/_matrix/media/v3/download/" + id, "/_matrix/media/v3/thumbnail/" + id + "?width=32&height=32"} {
			if r := anon.do(t, "GET", p, nil, nil); r.status != 404 || r.errcode() != "M_NOT_FOUND" {
				t.Errorf("legacy %s after the freeze: %d %s", p, r.status, r.body)
			}
		}
		if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+id, nil, nil); r.status != 200 {
			t.Errorf("authenticated: %d %s", r.status, r.body)
		}
		alice.upload(t, []byte("2"), "text/plain", "")
		alice.upload(t, []byte("3"), "text/plain", "")
		if r := alice.do(t, "POST", "/_matrix/media/v3/upload", strings.NewReader("4"), nil); r.status != 429 || r.errcode() != "M_LIMIT_EXCEEDED" {
			t.Errorf("fourth upload: %d %s", r.status, r.body)
		}
	})
}

func crc32IEEE(b []byte) uint32 { return crc32.ChecksumIEEE(b) }
